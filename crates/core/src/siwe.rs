//! Sign-In with Ethereum (EIP-4361) messages: building and strict parsing of the text a
//! wallet signs. Signature checks live with the key code (the API and the SDK); this
//! module only knows the format.

use std::fmt;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Why a SIWE message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid Sign-In with Ethereum message: {0}")]
pub struct SiweError(pub String);

/// An EIP-4361 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiweMessage {
    /// The site asking for the sign-in (host[:port]); must match the node's.
    pub domain: String,
    /// The signing account, EIP-55 checksummed (`0x` + 40 hex digits).
    pub address: String,
    /// Human-readable statement shown by the wallet.
    pub statement: Option<String>,
    /// The resource the session is for.
    pub uri: String,
    /// Always `1`.
    pub version: String,
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Server-issued nonce (at least 8 alphanumeric characters).
    pub nonce: String,
    /// When the message was made.
    pub issued_at: OffsetDateTime,
    /// When the message stops being valid.
    pub expiration_time: Option<OffsetDateTime>,
    /// When the message starts being valid.
    pub not_before: Option<OffsetDateTime>,
    /// Optional request id.
    pub request_id: Option<String>,
}

const HEADER_SUFFIX: &str = " wants you to sign in with your Ethereum account:";

fn time_text(t: &OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("RFC 3339 formats every UTC time")
}

impl SiweMessage {
    /// The authority (`host[:port]`) of the message's `URI`, if it is an absolute
    /// `http`/`https` URI: a relying party checks it names itself (EIP-4361), so a
    /// message signed for another site's resource cannot open a session here.
    pub fn uri_authority(&self) -> Option<&str> {
        let rest = self
            .uri
            .strip_prefix("https://")
            .or_else(|| self.uri.strip_prefix("http://"))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        // userinfo@host would let `evil@127.0.0.1:8420` pass as our host.
        (!authority.is_empty() && !authority.contains('@')).then_some(authority)
    }
}

impl fmt::Display for SiweMessage {
    /// The exact text a wallet signs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{HEADER_SUFFIX}\n{}\n\n", self.domain, self.address)?;
        if let Some(statement) = &self.statement {
            write!(f, "{statement}\n\n")?;
        }
        write!(
            f,
            "URI: {}\nVersion: {}\nChain ID: {}\nNonce: {}\nIssued At: {}",
            self.uri,
            self.version,
            self.chain_id,
            self.nonce,
            time_text(&self.issued_at)
        )?;
        if let Some(t) = &self.expiration_time {
            write!(f, "\nExpiration Time: {}", time_text(t))?;
        }
        if let Some(t) = &self.not_before {
            write!(f, "\nNot Before: {}", time_text(t))?;
        }
        if let Some(r) = &self.request_id {
            write!(f, "\nRequest ID: {r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for SiweMessage {
    type Err = SiweError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |m: &str| SiweError(m.to_string());
        let mut lines = text.split('\n');
        let header = lines.next().unwrap_or_default();
        let domain = header
            .strip_suffix(HEADER_SUFFIX)
            .filter(|d| !d.is_empty() && !d.contains(char::is_whitespace))
            .ok_or_else(|| err("the first line must be `<domain> wants you to sign in with your Ethereum account:`"))?;
        let address = lines.next().unwrap_or_default();
        let is_address = address.len() == 42
            && address.starts_with("0x")
            && address[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if !is_address {
            return Err(err(
                "the second line must be a 0x-prefixed 40-hex-digit address",
            ));
        }
        if lines.next() != Some("") {
            return Err(err("a blank line must follow the address"));
        }
        let mut rest: Vec<&str> = lines.collect();
        let statement = if rest.first().is_some_and(|l| !l.starts_with("URI: ")) {
            let s = rest.remove(0);
            if rest.first() != Some(&"") {
                return Err(err("a blank line must follow the statement"));
            }
            rest.remove(0);
            Some(s.to_string())
        } else {
            None
        };
        let mut fields = rest.into_iter();
        let mut field = |name: &str, required: bool| -> Result<Option<String>, SiweError> {
            let mut peek = fields.clone();
            match peek
                .next()
                .and_then(|l| l.strip_prefix(&format!("{name}: ")))
            {
                Some(v) => {
                    fields = peek;
                    Ok(Some(v.to_string()))
                }
                None if required => Err(SiweError(format!("missing `{name}:` line"))),
                None => Ok(None),
            }
        };
        let uri = field("URI", true)?.unwrap_or_default();
        let version = field("Version", true)?.unwrap_or_default();
        let chain_id = field("Chain ID", true)?.unwrap_or_default();
        let nonce = field("Nonce", true)?.unwrap_or_default();
        let issued_at = field("Issued At", true)?.unwrap_or_default();
        let expiration_time = field("Expiration Time", false)?;
        let not_before = field("Not Before", false)?;
        let request_id = field("Request ID", false)?;
        if let Some(extra) = fields.next() {
            return Err(SiweError(format!(
                "unexpected line `{extra}` (resources are not supported)"
            )));
        }
        if version != "1" {
            return Err(err("Version must be 1"));
        }
        if nonce.len() < 8 || !nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(err("Nonce must be at least 8 alphanumeric characters"));
        }
        let parse_time = |name: &str, v: &str| {
            OffsetDateTime::parse(v, &Rfc3339)
                .map_err(|_| SiweError(format!("{name} `{v}` is not an RFC 3339 time")))
        };
        Ok(SiweMessage {
            domain: domain.to_string(),
            address: address.to_string(),
            statement,
            uri,
            version,
            chain_id: chain_id
                .parse()
                .map_err(|_| err("Chain ID must be a number"))?,
            nonce,
            issued_at: parse_time("Issued At", &issued_at)?,
            expiration_time: expiration_time
                .map(|v| parse_time("Expiration Time", &v))
                .transpose()?,
            not_before: not_before
                .map(|v| parse_time("Not Before", &v))
                .transpose()?,
            request_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SiweMessage {
        SiweMessage {
            domain: "127.0.0.1:8420".into(),
            address: "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed".into(),
            statement: Some("Sign in to medmesh".into()),
            uri: "http://127.0.0.1:8420".into(),
            version: "1".into(),
            chain_id: 31337,
            nonce: "abcdef0123456789".into(),
            issued_at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
            expiration_time: Some(OffsetDateTime::from_unix_timestamp(1_800_000_600).unwrap()),
            not_before: None,
            request_id: None,
        }
    }

    #[test]
    fn round_trips_with_and_without_statement() {
        let m = sample();
        let text = m.to_string();
        assert!(text.starts_with(
            "127.0.0.1:8420 wants you to sign in with your Ethereum account:\n0x5aAeb"
        ));
        assert_eq!(text.parse::<SiweMessage>().unwrap(), m);
        let bare = SiweMessage {
            statement: None,
            ..sample()
        };
        assert_eq!(bare.to_string().parse::<SiweMessage>().unwrap(), bare);
    }

    #[test]
    fn uri_authority_is_the_host_and_port() {
        let with = |uri: &str| SiweMessage {
            uri: uri.into(),
            ..sample()
        };
        assert_eq!(
            with("http://127.0.0.1:8420").uri_authority(),
            Some("127.0.0.1:8420")
        );
        assert_eq!(
            with("https://node.example:8420/v1/auth?x=1").uri_authority(),
            Some("node.example:8420")
        );
        for bad in [
            "ftp://127.0.0.1:8420",
            "127.0.0.1:8420",
            "http://",
            "http://a@127.0.0.1:8420",
        ] {
            assert_eq!(with(bad).uri_authority(), None, "{bad}");
        }
    }

    #[test]
    fn rejects_malformed_messages() {
        let good = sample().to_string();
        for (bad, needle) in [
            (good.replace("wants you", "would like you"), "first line"),
            (
                good.replace("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0x123"),
                "address",
            ),
            (good.replace("Version: 1", "Version: 2"), "Version"),
            (
                good.replace("Nonce: abcdef0123456789", "Nonce: abc"),
                "Nonce",
            ),
            (good.replace("Chain ID: 31337", "Chain ID: x"), "Chain ID"),
            (format!("{good}\nResources:"), "unexpected line"),
            (
                good.replace("\nIssued At: 2027-01-15T08:00:00Z", ""),
                "Issued At",
            ),
        ] {
            let err = bad.parse::<SiweMessage>().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
