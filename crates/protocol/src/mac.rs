//! The keyed MAC that authenticates ZeroMQ messages between the servers of one group.
//!
//! When a cluster key is set, every request, reply and publication between servers carries one
//! more frame at its end, the MAC (32 bytes). It is HMAC-SHA256 under the key of a context label
//! followed by each covered frame as a 4-byte big-endian length and its bytes. Routing frames (a ROUTER's
//! identity and REQ's empty delimiter) are not covered, because sockets add and remove them.
//! See docs/replication.md for the format with an example.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The length of a MAC frame in bytes.
pub const MAC_LEN: usize = 32;

/// The minimum length of a cluster key in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// The kind of message a MAC covers. Each kind has its own label, so a MAC captured on one
/// kind of message is invalid on another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacContext {
    /// A request to a data server's request socket; covers the payload.
    Request,
    /// A reply from a data server's request socket; covers the payload.
    Reply,
    /// A message on a data server's PUB socket; covers the topic and the payload.
    Publication,
}

impl MacContext {
    /// Returns the label that starts the MAC input.
    pub fn label(self) -> &'static [u8] {
        match self {
            MacContext::Request => b"forum-request",
            MacContext::Reply => b"forum-reply",
            MacContext::Publication => b"forum-publication",
        }
    }
}

/// The error for a cluster key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("failed to read the cluster key file {path}: {source}")]
    Unreadable { path: String, source: std::io::Error },
    #[error("the cluster key from {origin} is {length} bytes long; use at least {MIN_KEY_LEN}, such as the output of `openssl rand -hex 32`")]
    TooShort { origin: String, length: usize },
}

/// A secret shared by the servers of one group. Cloning it is cheap, and its `Debug` output
/// never shows the key.
#[derive(Clone)]
pub struct ClusterKey {
    secret: Arc<[u8]>,
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Makes a key from its bytes; `origin` names where they came from, for the error.
    pub fn new(secret: &[u8], origin: &str) -> Result<ClusterKey, KeyError> {
        if secret.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort { origin: origin.to_owned(), length: secret.len() });
        }
        Ok(ClusterKey { secret: Arc::from(secret) })
    }

    /// Reads a key from a file, without the white space around it.
    pub fn from_file(path: &Path) -> Result<ClusterKey, KeyError> {
        let text = std::fs::read(path)
            .map_err(|source| KeyError::Unreadable { path: path.display().to_string(), source })?;
        ClusterKey::new(text.trim_ascii(), &path.display().to_string())
    }

    /// Returns the key given on the command line: the file when one is named, else the
    /// `FORUM_CLUSTER_KEY` text when it is set and not empty, else none.
    pub fn from_file_or_text(file: Option<&Path>, text: Option<&str>) -> Result<Option<ClusterKey>, KeyError> {
        if let Some(path) = file {
            return ClusterKey::from_file(path).map(Some);
        }
        match text.map(str::trim) {
            Some(text) if !text.is_empty() => ClusterKey::new(text.as_bytes(), "FORUM_CLUSTER_KEY").map(Some),
            _ => Ok(None),
        }
    }

    /// Generates a random key of 64 hexadecimal characters.
    pub fn generate() -> (ClusterKey, String) {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let text: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let key = ClusterKey::new(text.as_bytes(), "a generated key").expect("64 characters are enough");
        (key, text)
    }

    fn hmac(&self, context: MacContext, frames: &[&[u8]]) -> Hmac<Sha256> {
        let mut hmac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes a key of any length");
        hmac.update(context.label());
        for frame in frames {
            hmac.update(&(frame.len() as u32).to_be_bytes());
            hmac.update(frame);
        }
        hmac
    }

    /// Computes the MAC frame of a message of this kind with these covered frames.
    pub fn sign(&self, context: MacContext, frames: &[&[u8]]) -> [u8; MAC_LEN] {
        self.hmac(context, frames).finalize().into_bytes().into()
    }

    /// Checks a MAC frame in constant time.
    pub fn verify(&self, context: MacContext, frames: &[&[u8]], mac: &[u8]) -> bool {
        self.hmac(context, frames).verify_slice(mac).is_ok()
    }
}

/// The reason a received message failed the MAC check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("the message has no MAC frame")]
    Missing,
    #[error("the MAC frame does not match: the sender uses another cluster key or none")]
    Invalid,
}

/// Appends the MAC frame over the last `covered` frames, when a key is set.
pub fn seal(key: Option<&ClusterKey>, context: MacContext, frames: &mut Vec<Bytes>, covered: usize) {
    let Some(key) = key else { return };
    let start = frames.len().saturating_sub(covered);
    let parts: Vec<&[u8]> = frames[start..].iter().map(|frame| frame.as_ref()).collect();
    let mac = key.sign(context, &parts);
    frames.push(Bytes::copy_from_slice(&mac));
}

/// Removes the last frame and checks it as the MAC over the `covered` frames before it, when a
/// key is set. Without a key, the frames are left as they are.
pub fn unseal(key: Option<&ClusterKey>, context: MacContext, frames: &mut Vec<Bytes>, covered: usize) -> Result<(), MacError> {
    let Some(key) = key else { return Ok(()) };
    if frames.len() < covered + 1 {
        return Err(MacError::Missing);
    }
    let mac = frames.pop().expect("the length was checked");
    let start = frames.len() - covered;
    let parts: Vec<&[u8]> = frames[start..].iter().map(|frame| frame.as_ref()).collect();
    if key.verify(context, &parts, &mac) {
        Ok(())
    } else {
        Err(MacError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::new(&[7u8; 32], "test").unwrap()
    }

    #[test]
    fn mac_verifies_and_binds_context() {
        let mac = key().sign(MacContext::Request, &[b"payload"]);
        assert!(key().verify(MacContext::Request, &[b"payload"], &mac));
        assert!(!key().verify(MacContext::Reply, &[b"payload"], &mac));
        assert!(!key().verify(MacContext::Request, &[b"payloae"], &mac));
        assert!(!key().verify(MacContext::Request, &[b"payload"], &mac[..31]));
        let other = ClusterKey::new(&[8u8; 32], "test").unwrap();
        assert!(!other.verify(MacContext::Request, &[b"payload"], &mac));
    }

    #[test]
    fn frame_lengths_separate_frames() {
        let split = key().sign(MacContext::Publication, &[b"ab", b"c"]);
        assert!(!key().verify(MacContext::Publication, &[b"a", b"bc"], &split));
    }

    #[test]
    fn mac_golden_bytes() {
        // HMAC-SHA256(key = 32 bytes of 0x07, "forum-request" || 00 00 00 04 || "ping"), computed
        // independently with Python's hmac module.
        let mac = key().sign(MacContext::Request, &[b"ping"]);
        let hex: String = mac.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(hex, GOLDEN);
    }

    const GOLDEN: &str = "5929a9ab7893f01156c60881e19fd3d654fcaf77ac1a0091460ca070c614e229";

    #[test]
    fn seal_then_unseal() {
        let mut frames = vec![Bytes::from_static(b"identity"), Bytes::from_static(b"topic"), Bytes::from_static(b"payload")];
        seal(Some(&key()), MacContext::Publication, &mut frames, 2);
        assert_eq!(frames.len(), 4);
        let mut received = frames.clone();
        assert_eq!(unseal(Some(&key()), MacContext::Publication, &mut received, 2), Ok(()));
        assert_eq!(received.len(), 3);

        let mut tampered = frames.clone();
        tampered[2] = Bytes::from_static(b"payloaD");
        assert_eq!(unseal(Some(&key()), MacContext::Publication, &mut tampered, 2), Err(MacError::Invalid));
        let mut short = vec![Bytes::from_static(b"payload")];
        assert_eq!(unseal(Some(&key()), MacContext::Request, &mut short, 1), Err(MacError::Missing));
        let mut unkeyed = vec![Bytes::from_static(b"payload")];
        assert_eq!(unseal(None, MacContext::Request, &mut unkeyed, 1), Ok(()));
        assert_eq!(unkeyed.len(), 1);
    }

    #[test]
    fn short_key_rejected() {
        assert!(matches!(ClusterKey::new(b"short", "test"), Err(KeyError::TooShort { length: 5, .. })));
        assert!(ClusterKey::from_file_or_text(None, Some("  ")).unwrap().is_none());
    }
}
