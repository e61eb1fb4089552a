//! Subscriber tokens: the proof of a shared key that a [`Publisher`](crate::Publisher) may
//! demand from each subscriber before it sends it any message.
//!
//! A token is sent as an ordinary subscription whose topic prefix is the token, so any SUB
//! socket can send it, libzmq's included (`setsockopt(SUBSCRIBE, token)`). Its layout:
//!
//! | bytes | content |
//! |---|---|
//! | 20 | [`TOKEN_PREFIX`], `\xff` then `subscriber-token/1` and a NUL |
//! | 8 | the time of issue, Unix milliseconds, big-endian |
//! | 16 | a random nonce |
//! | 32 | HMAC-SHA256 under the key of [`TOKEN_LABEL`], the time and the nonce |
//!
//! The prefix starts with the byte 0xFF, which no UTF-8 text starts with, so a token never
//! matches a text topic. The publisher accepts a token whose time is within
//! [`TOKEN_MAX_AGE`] of its own clock, in either direction, and whose nonce it has not
//! accepted before within that time.
//!
//! NOTE: the token is not bound to the connection or to the server, because the NULL
//! mechanism offers nothing to bind it to. Someone who reads the traffic can copy a token
//! and present it to another port that accepts the same key, or to the same port once its
//! record of seen nonces has moved past it, within [`TOKEN_MAX_AGE`].

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The topic prefix that marks a subscription as a subscriber token.
pub const TOKEN_PREFIX: &[u8] = b"\xffsubscriber-token/1\x00";

/// The purpose label that starts the MAC input, so that a MAC made with the same key for
/// another purpose is never a valid token.
pub const TOKEN_LABEL: &[u8] = b"zmtp-guard subscriber token, version 1";

/// The length of a token in bytes.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + TIME_LEN + NONCE_LEN + MAC_LEN;

/// The largest difference between a token's time and the publisher's clock that the
/// publisher accepts, in either direction. It covers clock skew between hosts and the time
/// from issue to check (a connect timeout at most).
pub const TOKEN_MAX_AGE: Duration = Duration::from_secs(30);

const TIME_LEN: usize = 8;
const NONCE_LEN: usize = 16;
const MAC_LEN: usize = 32;

/// The maximum number of nonces that a [`SeenNonces`] keeps. Only valid tokens reach it, so
/// it grows only with key holders' connections. Beyond this many it drops the oldest.
const MAX_SEEN_NONCES: usize = 4096;

/// The reason a token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the subscriber token is {found} bytes long; expected {TOKEN_LEN}")]
    Length { found: usize },
    #[error("the subscriber token's MAC is invalid; check that the subscriber uses this port's key")]
    InvalidMac,
    #[error("the subscriber token was issued {skew_ms} ms away from this server's clock, beyond the {max_ms} ms allowed; check the clocks")]
    OutsideWindow { skew_ms: u64, max_ms: u64 },
    #[error("the subscriber token was already used")]
    Replayed,
}

/// The key that subscriber tokens are made and checked with. Its `Debug` output never
/// shows the key.
#[derive(Clone)]
pub struct SubscriberKey {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for SubscriberKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("SubscriberKey(..)")
    }
}

impl SubscriberKey {
    /// Makes a key from 32 secret bytes. Derive them for this purpose alone, such as with
    /// HKDF from a longer secret, rather than reusing an encryption key.
    pub fn new(secret: &[u8; 32]) -> SubscriberKey {
        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC-SHA256 takes a key of any length");
        SubscriberKey { mac }
    }

    /// Makes a new token for now, with a random nonce.
    pub fn token(&self) -> Bytes {
        self.token_issued_at(SystemTime::now())
    }

    /// Makes a token with the time `issued` and a random nonce, such as a stale one for a
    /// test.
    pub fn token_issued_at(&self, issued: SystemTime) -> Bytes {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        self.token_at(unix_millis(issued), &nonce)
    }

    fn token_at(&self, issued_ms: u64, nonce: &[u8; NONCE_LEN]) -> Bytes {
        let mut token = Vec::with_capacity(TOKEN_LEN);
        token.extend_from_slice(TOKEN_PREFIX);
        token.extend_from_slice(&issued_ms.to_be_bytes());
        token.extend_from_slice(nonce);
        let tag = self.tag(&token[TOKEN_PREFIX.len()..]);
        token.extend_from_slice(&tag.finalize().into_bytes());
        Bytes::from(token)
    }

    /// Returns the MAC state after the label and `time_and_nonce`.
    fn tag(&self, time_and_nonce: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(TOKEN_LABEL);
        mac.update(time_and_nonce);
        mac
    }

    /// Checks a subscription that starts with [`TOKEN_PREFIX`] against the key and `now`,
    /// and returns its nonce. [`SeenNonces`] checks for replays.
    pub fn verify(&self, token: &[u8], now: SystemTime) -> Result<[u8; NONCE_LEN], TokenError> {
        if token.len() != TOKEN_LEN || !token.starts_with(TOKEN_PREFIX) {
            return Err(TokenError::Length { found: token.len() });
        }
        let body = &token[TOKEN_PREFIX.len()..];
        let (time_and_nonce, mac) = body.split_at(TIME_LEN + NONCE_LEN);
        // Checks the MAC first, so that nothing is learned about an unauthenticated time.
        self.tag(time_and_nonce).verify_slice(mac).map_err(|_| TokenError::InvalidMac)?;

        let issued_ms = u64::from_be_bytes(time_and_nonce[..TIME_LEN].try_into().expect("8 bytes"));
        let skew_ms = unix_millis(now).abs_diff(issued_ms);
        let max_ms = TOKEN_MAX_AGE.as_millis() as u64;
        if skew_ms > max_ms {
            return Err(TokenError::OutsideWindow { skew_ms, max_ms });
        }
        Ok(time_and_nonce[TIME_LEN..].try_into().expect("16 bytes"))
    }
}

/// The nonces of the tokens that a publisher accepted within the last [`TOKEN_MAX_AGE`],
/// so that a token copied off the network cannot open a second connection to the same port.
#[derive(Debug, Default)]
pub(crate) struct SeenNonces {
    order: VecDeque<(tokio::time::Instant, [u8; NONCE_LEN])>,
    nonces: HashSet<[u8; NONCE_LEN]>,
}

impl SeenNonces {
    /// Records `nonce`, or returns [`TokenError::Replayed`] when it is already recorded.
    pub(crate) fn insert(&mut self, nonce: [u8; NONCE_LEN], now: tokio::time::Instant) -> Result<(), TokenError> {
        // A token older than twice the window fails the time check, so its nonce can go.
        while let Some((accepted, old)) = self.order.front() {
            if now.duration_since(*accepted) <= 2 * TOKEN_MAX_AGE && self.order.len() < MAX_SEEN_NONCES {
                break;
            }
            self.nonces.remove(old);
            self.order.pop_front();
        }
        if !self.nonces.insert(nonce) {
            return Err(TokenError::Replayed);
        }
        self.order.push_back((now, nonce));
        Ok(())
    }
}

/// Returns `time` in Unix milliseconds, or 0 for a time before 1970.
fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SubscriberKey {
        SubscriberKey::new(&[byte; 32])
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    const NOW_MS: u64 = 1_800_000_000_000;

    #[test]
    fn token_layout() {
        let token = key(1).token();
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(TOKEN_PREFIX[0], 0xFF, "the prefix must not be UTF-8 text");
        assert_ne!(key(1).token(), token, "two tokens share a nonce");
    }

    #[test]
    fn fresh_token_accepted() {
        let token = key(1).token();
        assert!(key(1).verify(&token, SystemTime::now()).is_ok());

        let nonce = [9u8; NONCE_LEN];
        let token = key(1).token_at(NOW_MS, &nonce);
        assert_eq!(key(1).verify(&token, at(NOW_MS)), Ok(nonce));
    }

    #[test]
    fn window_edges() {
        let max_ms = TOKEN_MAX_AGE.as_millis() as u64;
        let token = key(1).token_at(NOW_MS, &[0; NONCE_LEN]);
        assert!(key(1).verify(&token, at(NOW_MS + max_ms)).is_ok());
        assert!(key(1).verify(&token, at(NOW_MS - max_ms)).is_ok());
        assert_eq!(key(1).verify(&token, at(NOW_MS + max_ms + 1)), Err(TokenError::OutsideWindow { skew_ms: max_ms + 1, max_ms }));
        assert_eq!(key(1).verify(&token, at(NOW_MS - max_ms - 1)), Err(TokenError::OutsideWindow { skew_ms: max_ms + 1, max_ms }));
    }

    #[test]
    fn other_key_rejected() {
        let token = key(1).token();
        assert_eq!(key(2).verify(&token, SystemTime::now()), Err(TokenError::InvalidMac));
    }

    #[test]
    fn altered_tokens_rejected() {
        let token = key(1).token_at(NOW_MS, &[3; NONCE_LEN]);
        for index in TOKEN_PREFIX.len()..TOKEN_LEN {
            let mut altered = token.to_vec();
            altered[index] ^= 0x01;
            assert_eq!(key(1).verify(&altered, at(NOW_MS)), Err(TokenError::InvalidMac), "byte {index} flipped");
        }

        // A later time with the old MAC, as a replay that tries to stay in the window.
        let mut moved = token.to_vec();
        moved[TOKEN_PREFIX.len()..TOKEN_PREFIX.len() + TIME_LEN].copy_from_slice(&(NOW_MS + 60_000).to_be_bytes());
        assert_eq!(key(1).verify(&moved, at(NOW_MS + 60_000)), Err(TokenError::InvalidMac));
    }

    #[test]
    fn garbled_tokens_rejected() {
        let token = key(1).token();
        let cases: [(&str, Vec<u8>); 4] = [
            ("prefix only", TOKEN_PREFIX.to_vec()),
            ("one byte short", token[..TOKEN_LEN - 1].to_vec()),
            ("one byte long", [&token[..], b"x"].concat()),
            ("other prefix", [b"x", &token[1..]].concat()),
        ];
        for (case, garbled) in cases {
            assert!(matches!(key(1).verify(&garbled, SystemTime::now()), Err(TokenError::Length { .. })), "{case}");
        }
        let zeros = [TOKEN_PREFIX, &[0u8; TOKEN_LEN - TOKEN_PREFIX.len()]].concat();
        assert_eq!(key(1).verify(&zeros, SystemTime::now()), Err(TokenError::InvalidMac));
    }

    #[test]
    fn label_is_bound() {
        // A plain HMAC of the time and nonce, without the label, is not a token.
        let nonce = [5u8; NONCE_LEN];
        let mut mac = Hmac::<Sha256>::new_from_slice(&[1u8; 32]).unwrap();
        mac.update(&NOW_MS.to_be_bytes());
        mac.update(&nonce);
        let unlabelled = [TOKEN_PREFIX, &NOW_MS.to_be_bytes(), &nonce, &mac.finalize().into_bytes()].concat();
        assert_eq!(key(1).verify(&unlabelled, at(NOW_MS)), Err(TokenError::InvalidMac));
    }

    #[test]
    fn seen_nonce_rejected_until_it_expires() {
        let mut seen = SeenNonces::default();
        let start = tokio::time::Instant::now();
        assert_eq!(seen.insert([1; NONCE_LEN], start), Ok(()));
        assert_eq!(seen.insert([2; NONCE_LEN], start), Ok(()));
        assert_eq!(seen.insert([1; NONCE_LEN], start + Duration::from_secs(1)), Err(TokenError::Replayed));

        let later = start + 2 * TOKEN_MAX_AGE + Duration::from_secs(1);
        assert_eq!(seen.insert([1; NONCE_LEN], later), Ok(()), "an expired nonce is kept");
        assert_eq!(seen.order.len(), 1);
    }

    #[test]
    fn seen_nonces_bounded() {
        let mut seen = SeenNonces::default();
        let now = tokio::time::Instant::now();
        for index in 0..(MAX_SEEN_NONCES as u32 + 10) {
            let mut nonce = [0u8; NONCE_LEN];
            nonce[..4].copy_from_slice(&index.to_be_bytes());
            assert_eq!(seen.insert(nonce, now), Ok(()));
        }
        assert_eq!(seen.order.len(), MAX_SEEN_NONCES);
        assert_eq!(seen.nonces.len(), MAX_SEEN_NONCES);
    }
}
