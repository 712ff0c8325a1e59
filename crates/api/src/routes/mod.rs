//! Handlers, thin: extract, call one service method, map the answer.

pub mod access;
pub mod audit;
pub mod auth;
pub mod datasets;
pub mod events;
pub mod grants;
pub mod network;
pub mod records;
pub mod system;
pub mod telemetry;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `axum::Json` whose rejections are problem+json.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(Self(axum::Json::<T>::from_request(req, state).await?.0))
    }
}

/// `axum::extract::Query` whose rejections are problem+json, and which refuses
/// percent-encoded bytes that are not UTF-8 (the standard parser would turn them into
/// U+FFFD, so two different patient references could become one).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Some(query) = parts.uri.query() {
            check_utf8_query(query)?;
        }
        Ok(Self(
            axum::extract::Query::<T>::from_request_parts(parts, state)
                .await?
                .0,
        ))
    }
}

/// Every key and value of `query`, percent-decoded, must be UTF-8.
fn check_utf8_query(query: &str) -> Result<(), ApiError> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = String::from_utf8(percent_decode(key)).map_err(|_| {
            ApiError::bad_request("a query parameter name is not valid UTF-8 once decoded")
        })?;
        if String::from_utf8(percent_decode(value)).is_err() {
            return Err(ApiError::bad_request(format!(
                "query parameter `{name}` is not valid UTF-8 once percent-decoded; \
                 encode text as UTF-8 before percent-encoding it"
            )));
        }
    }
    Ok(())
}

/// `application/x-www-form-urlencoded` decoding of one component, bytes as they are.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_keeps_raw_bytes() {
        assert_eq!(percent_decode("MRN-0042"), b"MRN-0042");
        assert_eq!(percent_decode("a+b%20c"), b"a b c");
        assert_eq!(percent_decode("%FF%FE"), vec![0xff, 0xfe]);
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%C3%A9"), "é".as_bytes());
    }

    #[test]
    fn non_utf8_values_are_refused_by_name() {
        assert!(check_utf8_query("patient=MRN-1&type=text%2Fplain").is_ok());
        assert!(check_utf8_query("patient=Ren%C3%A9e").is_ok());
        let err = check_utf8_query("limit=5&patient=%FF%FE").unwrap_err();
        assert!(err.detail().contains("`patient`"), "{}", err.detail());
    }
}
