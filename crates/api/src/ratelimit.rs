//! Token buckets: one per client address before authentication (ten times a caller's
//! allowance, since local clients share 127.0.0.1), one per token (or wallet) after
//! it, so rotating bogus tokens gains nothing. Beyond its bucket a client gets 429 with
//! `Retry-After`.
//!
//! The table is bounded without scanning it (a [`BoundedMap`]): a bucket untouched for
//! a generation is forgotten (it was refilling anyway).

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use medmesh_core::bounded::BoundedMap;

use crate::state::lock;

/// Buckets per generation.
const GENERATION: usize = 16_384;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by client.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<BoundedMap<String, Bucket>>,
}

impl RateLimiter {
    /// `rate` requests per second sustained, `burst` at once.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate: rate.max(0.001),
            burst: burst.max(1.0),
            buckets: Mutex::new(BoundedMap::new(GENERATION)),
        }
    }

    /// Takes one request from `key`'s bucket; `Err(seconds)` says when to retry.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        let mut bucket = buckets.remove(&key.to_string()).unwrap_or(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        let answer = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.rate).ceil() as u64)
        };
        buckets.insert(key.to_string(), bucket);
        answer
    }

    /// Buckets held (both generations), for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.buckets).len()
    }
}

/// The bucket key of a client address: IPv6 clients by their /64, since one host
/// usually holds a whole /64.
pub fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v6.segments();
                format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let limiter = RateLimiter::new(1.0, 3.0);
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        assert_eq!(limiter.check("a"), Err(1));
        assert!(limiter.check("b").is_ok(), "buckets are per client");
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_recent_buckets() {
        let limiter = RateLimiter::new(0.001, 1.0);
        assert!(limiter.check("steady").is_ok());
        for i in 0..(5 * GENERATION) {
            let _ = limiter.check(&format!("flood-{i}"));
            if i % 1000 == 0 {
                // A client seen in every generation keeps its (empty) bucket.
                assert!(limiter.check("steady").is_err(), "bucket forgotten at {i}");
            }
        }
        assert!(
            limiter.len() <= 2 * GENERATION + 1,
            "{} buckets",
            limiter.len()
        );
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "ip:10.0.0.1");
    }
}
