//! Framing shared by medmesh's stream protocols and bitswap: every message is an
//! unsigned-varint length followed by that many bytes (as in every libp2p protocol).
//! The frame functions are public for peers written elsewhere (tests' misbehaving
//! peers among them); the rest is the crate's own.

use std::io;
use std::time::Duration;

use libp2p::{PeerId, StreamProtocol};
use libp2p_stream::{Control, OpenStreamError};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::OwnedSemaphorePermit;

use crate::limits::FrameBudget;

/// Largest JSON control message accepted (requests and replies are small).
pub(crate) const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// How long a peer has to finish a frame once its length has arrived (unless the
/// caller sets its own: bitswap takes `frame_timeout_secs`).
pub(crate) const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames up to this size are read without taking from a [`FrameBudget`].
const SMALL_FRAME: usize = 64 * 1024;
/// What a frame's buffer starts at: it grows as bytes arrive, so a length a peer
/// claims costs nothing until the bytes come.
const INITIAL_BUFFER: usize = 4 * 1024;

/// Reads one frame of at most `max` bytes; `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    Ok(read_frame_within(reader, max, None, FRAME_TIMEOUT)
        .await?
        .map(|(frame, _)| frame))
}

/// Reads one frame of at most `max` bytes, whose body must arrive within `timeout` of
/// its length. A frame above 64 KiB first takes its size from `budget` (returned with
/// it: hold it while the frame is in use); when the budget stays full, the read fails
/// rather than wait. The body is read as it arrives, never allocated up front from the
/// length a peer claims.
pub(crate) async fn read_frame_within<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
    budget: Option<&FrameBudget>,
    timeout: Duration,
) -> io::Result<Option<(Vec<u8>, Option<OwnedSemaphorePermit>)>> {
    let Some(len) = read_length(reader, max).await? else {
        return Ok(None);
    };
    let permit = match budget {
        Some(budget) if len > SMALL_FRAME => Some(budget.reserve(len).await.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("no room for a {len}-byte frame: too many large frames in flight"),
            )
        })?),
        _ => None,
    };
    let body = async {
        let mut buf = Vec::with_capacity(len.min(INITIAL_BUFFER));
        (&mut *reader)
            .take(len as u64)
            .read_to_end(&mut buf)
            .await?;
        if buf.len() < len {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        Ok(buf)
    };
    let frame = tokio::time::timeout(timeout, body).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("a {len}-byte frame did not arrive within {timeout:?}"),
        )
    })??;
    Ok(Some((frame, permit)))
}

/// Reads a frame's varint length; `None` at a clean end of stream.
async fn read_length<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> io::Result<Option<usize>> {
    let mut len: u64 = 0;
    for i in 0..10 {
        let mut byte = [0u8; 1];
        if reader.read(&mut byte).await? == 0 {
            if i == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        len |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > max {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("message of {len} bytes exceeds the {max}-byte limit"),
                ));
            }
            return Ok(Some(len));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "message length is not a valid varint",
    ))
}

/// `len` as an unsigned varint (LEB128), as in length prefixes and CID prefixes.
pub fn varint(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    let mut n = len as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    writer.write_all(&varint(bytes.len())).await?;
    writer.write_all(bytes).await
}

/// The answer to a control request: `ok`, or an `error` to show the user, plus what the
/// protocol returns on success.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(bound(deserialize = "T: DeserializeOwned"))]
pub(crate) struct Reply<T = ()> {
    #[serde(default)]
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
}

impl<T> Reply<T> {
    pub(crate) fn ok(result: Option<T>) -> Self {
        Self {
            ok: true,
            error: None,
            result,
        }
    }

    pub(crate) fn refused(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            result: None,
        }
    }
}

/// How long opening a stream (dialing first if needed) may take.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a peer may stay silent in the middle of an exchange.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens a stream to `peer`, giving up after [`OPEN_TIMEOUT`]: `libp2p-stream` waits
/// for a connection without a deadline of its own (a dial it could not start, or a
/// connection closing under it, would otherwise leave the caller waiting forever).
pub(crate) async fn open_stream(
    control: &mut Control,
    peer: PeerId,
    protocol: StreamProtocol,
) -> Result<libp2p::Stream, OpenStreamError> {
    tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, protocol))
        .await
        .unwrap_or_else(|_| {
            Err(OpenStreamError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no stream to {peer} within {OPEN_TIMEOUT:?}"),
            )))
        })
}

/// `operation`, failing with `TimedOut` if the peer stays silent for [`IDLE_TIMEOUT`].
pub(crate) async fn within_idle<T>(
    operation: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(IDLE_TIMEOUT, operation)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer sent nothing for {IDLE_TIMEOUT:?}"),
            ))
        })
}

/// Reads one JSON control message.
pub(crate) async fn read_json<R: AsyncRead + Unpin, T: DeserializeOwned>(
    reader: &mut R,
) -> io::Result<T> {
    let frame = read_frame(reader, MAX_CONTROL_FRAME)
        .await?
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    serde_json::from_slice(&frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes one JSON control message and flushes it.
pub(crate) async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    value: &T,
) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).expect("control messages serialize");
    write_frame(writer, &bytes).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let payload = vec![7u8; len];
            let mut buf = Vec::new();
            write_frame(&mut buf, &payload).await.unwrap();
            let mut reader = futures::io::Cursor::new(buf);
            assert_eq!(
                read_frame(&mut reader, 1 << 20).await.unwrap(),
                Some(payload)
            );
            assert_eq!(read_frame(&mut reader, 1 << 20).await.unwrap(), None);
        }
        let mut buf = Vec::new();
        write_frame(&mut buf, &[1u8; 200]).await.unwrap();
        let err = read_frame(&mut futures::io::Cursor::new(buf), 100)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("exceeds the 100-byte limit"),
            "{err}"
        );
        let err = read_frame(&mut futures::io::Cursor::new(vec![0x85]), 100)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = read_frame(&mut futures::io::Cursor::new(vec![0xff; 11]), 100)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("varint"), "{err}");
    }

    /// A peer that announces a large frame and sends it slowly, or never finishes it,
    /// holds neither the announced size nor the read for long.
    #[tokio::test]
    async fn a_frame_never_finished_times_out_and_large_ones_take_from_the_budget() {
        /// A peer that went silent: reads never complete.
        struct Silent;
        impl AsyncRead for Silent {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                _: &mut [u8],
            ) -> std::task::Poll<io::Result<usize>> {
                std::task::Poll::Pending
            }
        }
        let mut sent = varint(4 << 20);
        sent.extend_from_slice(&[1u8; 1000]);
        let budget = FrameBudget::new(8 << 20);
        let mut reader = futures::io::Cursor::new(sent).chain(Silent);
        let started = std::time::Instant::now();
        let err = read_frame_within(
            &mut reader,
            4 << 20,
            Some(&budget),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(budget.available_kib(), 8 * 1024, "the reservation is back");

        // A complete large frame comes with its reservation, held until dropped.
        let mut buf = Vec::new();
        write_frame(&mut buf, &vec![7u8; 100_000]).await.unwrap();
        let (frame, permit) = read_frame_within(
            &mut futures::io::Cursor::new(buf),
            1 << 20,
            Some(&budget),
            Duration::from_secs(5),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(frame.len(), 100_000);
        assert!(permit.is_some());
        assert_eq!(budget.available_kib(), 8 * 1024 - 98);
        drop(permit);
        assert_eq!(budget.available_kib(), 8 * 1024);
    }
}
