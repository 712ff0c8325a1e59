//! Answers `/ipfs/ping/1.0.0` on every connection, whether or not the peer serves ping
//! itself. (`libp2p::ping::Behaviour` 0.48 stops answering inbound pings on a
//! connection once its own outbound ping was refused, so a light js-libp2p node without
//! a ping service could never ping this node; this node does not ping others.)

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::StreamProtocol;
use libp2p_stream::Control;

use crate::limits::Slots;
use crate::NetError;

/// The ping protocol, as every libp2p implementation speaks it.
pub(crate) const PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/ping/1.0.0");
/// Bytes of one ping.
const PING_SIZE: usize = 32;
/// A ping stream idle this long is closed (rust-libp2p peers reuse one every 15 s;
/// js-libp2p opens one per ping and closes its side at once).
const IDLE: Duration = Duration::from_secs(60);

pub(crate) fn serve(control: &mut Control) -> Result<(), NetError> {
    let mut incoming = control
        .accept(PROTOCOL)
        .map_err(NetError::setup(format!("accepting {PROTOCOL}")))?;
    let slots = Slots::new("ping streams", 2, 512);
    tokio::spawn(async move {
        while let Some((peer, mut stream)) = incoming.next().await {
            let slot = match slots.try_take(peer) {
                Ok(slot) => slot,
                Err(refusal) => {
                    tracing::debug!(%peer, refusal, "ping stream refused");
                    continue;
                }
            };
            // Ping is auxiliary: it must not keep an otherwise idle connection open.
            stream.ignore_for_keep_alive();
            tokio::spawn(async move {
                let mut payload = [0u8; PING_SIZE];
                // Until the peer closes its side (js-libp2p: after one ping), fails or
                // stays idle.
                while let Ok(Ok(())) =
                    tokio::time::timeout(IDLE, stream.read_exact(&mut payload)).await
                {
                    if stream.write_all(&payload).await.is_err() || stream.flush().await.is_err() {
                        break;
                    }
                }
                let _ = stream.close().await;
                drop(slot);
            });
        }
    });
    Ok(())
}
