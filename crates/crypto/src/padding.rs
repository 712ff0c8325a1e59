//! Length hiding for small sealed values (record metadata): the plaintext is prefixed
//! with its length and padded with zeros to a multiple of [`BUCKET`] bytes, so a
//! ciphertext's size says nothing about, e.g., how long a patient reference is.

use crate::CryptoError;

/// Padded plaintexts are a multiple of this many bytes.
const BUCKET: usize = 128;

/// `len (u32, big-endian) || value || zeros`, a multiple of [`BUCKET`] bytes.
pub(crate) fn pad(value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut out = Vec::with_capacity(len.div_ceil(BUCKET) * BUCKET);
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
    out.resize(len.div_ceil(BUCKET) * BUCKET, 0);
    out
}

/// The value [`pad`] padded.
pub(crate) fn unpad(padded: &[u8]) -> Result<&[u8], CryptoError> {
    let bad = || CryptoError::Sealed("its padding is malformed".into());
    let (len, rest) = padded.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = u32::from_be_bytes(*len) as usize;
    rest.get(..len).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_hides_the_length_within_a_bucket_and_round_trips() {
        let short = pad(b"MRN-1");
        let long = pad(&[b'x'; 100]);
        assert_eq!((short.len(), long.len()), (BUCKET, BUCKET));
        assert_eq!(pad(&[0; 200]).len(), 2 * BUCKET);
        assert_eq!(unpad(&short).unwrap(), b"MRN-1");
        assert_eq!(unpad(&pad(b"")).unwrap(), b"");
        assert!(
            unpad(&[0, 0, 1, 0]).is_err(),
            "a length past the end is refused"
        );
        assert!(unpad(&[0, 0]).is_err());
    }
}
