//! The keyed MAC that authenticates ZeroMQ messages between the servers of one group.
//!
//! When a cluster key is set, every request, reply and publication between servers carries one
//! more frame at its end, the MAC (32 bytes). It is HMAC-SHA256 under the key of a context label
//! followed by each covered frame as a 4-byte big-endian length and its bytes. Routing frames (a ROUTER's
//! identity and REQ's empty delimiter) are not covered, because sockets add and remove them.
//! See docs/replication.md for the format with an example.

//! The authenticated encryption of ZeroMQ messages between the servers of one group.
//!
//! When a cluster key is set, the payload frame of every request, reply and publication is
//! replaced by its sealed form: a random 24-byte nonce, then the XChaCha20-Poly1305 ciphertext
//! of the payload with its 16-byte tag. The encryption key is HKDF-SHA256 of the cluster key.
//! The associated data is a context label followed by each clear frame that the message binds
//! (a publication's topic) as a 4-byte big-endian length and its bytes. The topic stays in
//! clear because a SUB socket filters on its prefix. Routing frames (a ROUTER's identity and
//! REQ's empty delimiter) are not bound, because sockets add and remove them.
//! See docs/replication.md for the format with an example.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;

/// The length of the random nonce at the start of a sealed payload, in bytes.
pub const NONCE_LEN: usize = 24;

/// The length of the Poly1305 tag at the end of a sealed payload, in bytes.
pub const TAG_LEN: usize = 16;

/// The bytes that sealing adds to a payload: the nonce and the tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The minimum length of a cluster key in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// The HKDF `info` input that derives the XChaCha20-Poly1305 key from the cluster key. A new
/// message format gets a new label, so its key differs from this one.
const KEY_DERIVATION_INFO: &[u8] = b"forum cluster key: XChaCha20-Poly1305 message key, version 1";

/// The kind of a sealed message. Each kind has its own label in the associated data, so a
/// message captured as one kind fails authentication as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacContext {
    /// A request to a data server's request socket; seals the payload.
    Request,
    /// A reply from a data server's request socket; seals the payload.
    Reply,
    /// A message on a data server's PUB socket; seals the payload and binds the clear topic.
    Publication,
}

impl MacContext {
    /// Returns the label that starts the associated data.
    pub fn label(self) -> &'static [u8] {
        match self {
            MacContext::Request => b"forum-request",
            MacContext::Reply => b"forum-reply",
            MacContext::Publication => b"forum-publication",
        }
    }

    /// Returns the associated data: the label, then each bound frame with its length.
    fn associated_data(self, bound_frames: &[Bytes]) -> Vec<u8> {
        let frame_bytes: usize = bound_frames.iter().map(|frame| 4 + frame.len()).sum();
        let mut data = Vec::with_capacity(self.label().len() + frame_bytes);
        data.extend_from_slice(self.label());
        for frame in bound_frames {
            data.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            data.extend_from_slice(frame);
        }
        data
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

/// A secret shared by the servers of one group, kept as the cipher derived from it. Cloning it
/// is cheap, and its `Debug` output never shows the key.
#[derive(Clone)]
pub struct ClusterKey {
    cipher: Arc<XChaCha20Poly1305>,
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
        let mut message_key = [0u8; 32];
        Hkdf::<Sha256>::new(None, secret)
            .expand(KEY_DERIVATION_INFO, &mut message_key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let cipher = XChaCha20Poly1305::new(&message_key.into());
        Ok(ClusterKey { cipher: Arc::new(cipher) })
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
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let text: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let key = ClusterKey::new(text.as_bytes(), "a generated key").expect("64 characters are enough");
        (key, text)
    }

    /// Returns the sealed form of `payload`: the nonce, the ciphertext and the tag.
    fn encrypt(&self, nonce: &[u8; NONCE_LEN], associated_data: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut sealed = Vec::with_capacity(SEAL_OVERHEAD + payload.len());
        sealed.extend_from_slice(nonce);
        sealed.extend_from_slice(payload);
        let tag = self
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(nonce), associated_data, &mut sealed[NONCE_LEN..])
            .expect("XChaCha20-Poly1305 encrypts payloads of up to 256 GiB");
        sealed.extend_from_slice(&tag);
        sealed
    }

    /// Returns the payload of a sealed form, or `None` when it fails authentication.
    fn decrypt(&self, associated_data: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, rest) = sealed.split_at_checked(NONCE_LEN)?;
        let (ciphertext, tag) = rest.split_at_checked(rest.len().checked_sub(TAG_LEN)?)?;
        let mut payload = ciphertext.to_vec();
        self.cipher
            .decrypt_in_place_detached(XNonce::from_slice(nonce), associated_data, &mut payload, Tag::from_slice(tag))
            .ok()?;
        Some(payload)
    }
}

/// The reason a received message failed authentication (the Poly1305 tag check).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("the message has too few frames or too short a payload to be sealed: the sender uses no cluster key")]
    Missing,
    #[error("the message failed authentication: the sender uses another cluster key, or the message was altered")]
    Invalid,
}

/// Seals the last of the `covered` frames at the end of `frames` when a key is set: it
/// encrypts that payload frame in place and binds the covered frames before it (a
/// publication's topic), which stay in clear, as associated data. Without a key, the frames are
/// left as they are.
pub fn seal(key: Option<&ClusterKey>, context: MacContext, frames: &mut [Bytes], covered: usize) {
    let Some(key) = key else { return };
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    seal_with_nonce(key, context, frames, covered, &nonce);
}

fn seal_with_nonce(key: &ClusterKey, context: MacContext, frames: &mut [Bytes], covered: usize, nonce: &[u8; NONCE_LEN]) {
    let Some((payload, before)) = frames.split_last_mut() else { return };
    let start = before.len().saturating_sub(covered.saturating_sub(1));
    let associated_data = context.associated_data(&before[start..]);
    *payload = Bytes::from(key.encrypt(nonce, &associated_data, payload));
}

/// Opens a message sealed by [`seal`] with the same `context` and `covered` when a key is set:
/// it decrypts the last frame in place after checking it with the covered clear frames before
/// it. Without a key, the frames are left as they are, and on an error they are unchanged.
pub fn unseal(key: Option<&ClusterKey>, context: MacContext, frames: &mut [Bytes], covered: usize) -> Result<(), MacError> {
    let Some(key) = key else { return Ok(()) };
    let Some((sealed, before)) = frames.split_last_mut() else { return Err(MacError::Missing) };
    let bound = covered.saturating_sub(1);
    if before.len() < bound || sealed.len() < SEAL_OVERHEAD {
        return Err(MacError::Missing);
    }
    let associated_data = context.associated_data(&before[before.len() - bound..]);
    let payload = key.decrypt(&associated_data, sealed).ok_or(MacError::Invalid)?;
    *sealed = Bytes::from(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::new(&[7u8; 32], "test").unwrap()
    }

    fn publication() -> Vec<Bytes> {
        vec![Bytes::from_static(b"identity"), Bytes::from_static(b"webserver"), Bytes::from_static(b"private payload")]
    }

    #[test]
    fn seal_hides_payload_keeps_topic() {
        let mut frames = publication();
        seal(Some(&key()), MacContext::Publication, &mut frames, 2);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], Bytes::from_static(b"identity"));
        assert_eq!(frames[1], Bytes::from_static(b"webserver"));
        assert_eq!(frames[2].len(), b"private payload".len() + SEAL_OVERHEAD);
        assert!(!frames[2].windows(7).any(|window| window == b"private"), "the payload is in clear");

        assert_eq!(unseal(Some(&key()), MacContext::Publication, &mut frames, 2), Ok(()));
        assert_eq!(frames, publication());
    }

    #[test]
    fn nonce_differs_per_message() {
        let mut first = publication();
        let mut second = publication();
        seal(Some(&key()), MacContext::Publication, &mut first, 2);
        seal(Some(&key()), MacContext::Publication, &mut second, 2);
        assert_ne!(first[2][..NONCE_LEN], second[2][..NONCE_LEN]);
        assert_ne!(first[2], second[2]);
    }

    #[test]
    fn unseal_rejects_altered_messages() {
        let mut sealed = publication();
        seal(Some(&key()), MacContext::Publication, &mut sealed, 2);

        let mut other_context = sealed.clone();
        assert_eq!(unseal(Some(&key()), MacContext::Reply, &mut other_context, 2), Err(MacError::Invalid));
        assert_eq!(other_context, sealed, "a failed unseal changed the frames");

        let mut other_topic = sealed.clone();
        other_topic[1] = Bytes::from_static(b"checkpoint");
        assert_eq!(unseal(Some(&key()), MacContext::Publication, &mut other_topic, 2), Err(MacError::Invalid));

        let mut flipped = sealed.clone();
        let mut payload = flipped[2].to_vec();
        payload[NONCE_LEN] ^= 1;
        flipped[2] = Bytes::from(payload);
        assert_eq!(unseal(Some(&key()), MacContext::Publication, &mut flipped, 2), Err(MacError::Invalid));

        let other_key = ClusterKey::new(&[8u8; 32], "test").unwrap();
        let mut under_other_key = sealed.clone();
        assert_eq!(unseal(Some(&other_key), MacContext::Publication, &mut under_other_key, 2), Err(MacError::Invalid));

        // A covered frame count that moves the topic out of the associated data fails too.
        let mut fewer_covered = sealed.clone();
        assert_eq!(unseal(Some(&key()), MacContext::Publication, &mut fewer_covered, 1), Err(MacError::Invalid));
    }

    #[test]
    fn unseal_reports_unsealed_messages() {
        let mut clear = vec![Bytes::from_static(b"ping")];
        assert_eq!(unseal(Some(&key()), MacContext::Request, &mut clear, 1), Err(MacError::Missing));
        let mut no_topic = vec![Bytes::from(vec![0u8; 64])];
        assert_eq!(unseal(Some(&key()), MacContext::Publication, &mut no_topic, 2), Err(MacError::Missing));
        let mut empty: Vec<Bytes> = Vec::new();
        assert_eq!(unseal(Some(&key()), MacContext::Request, &mut empty, 1), Err(MacError::Missing));

        let mut keyless = vec![Bytes::from_static(b"ping")];
        seal(None, MacContext::Request, &mut keyless, 1);
        assert_eq!(keyless, vec![Bytes::from_static(b"ping")]);
        assert_eq!(unseal(None, MacContext::Request, &mut keyless, 1), Ok(()));
        assert_eq!(keyless, vec![Bytes::from_static(b"ping")]);
    }

    #[test]
    fn sealed_golden_bytes() {
        // The key is 32 bytes of 0x07, the nonce the bytes 0 to 23, the message the publication
        // ["webserver", "ping"]. Computed independently with tests/interop/xchacha.py, a
        // pure-Python XChaCha20-Poly1305 and HKDF that checks the RFC 8439 and
        // draft-irtf-cfrg-xchacha-03 test vectors.
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|index| index as u8);
        let mut frames = vec![Bytes::from_static(b"webserver"), Bytes::from_static(b"ping")];
        seal_with_nonce(&key(), MacContext::Publication, &mut frames, 2, &nonce);
        let hex: String = frames[1].iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(hex, GOLDEN);
    }

    const GOLDEN: &str = "000102030405060708090a0b0c0d0e0f1011121314151617e046771eadb47a2ab4604ad1736e633864d3bbbc";

    #[test]
    fn short_key_rejected() {
        assert!(matches!(ClusterKey::new(b"short", "test"), Err(KeyError::TooShort { length: 5, .. })));
        assert!(ClusterKey::from_file_or_text(None, Some("  ")).unwrap().is_none());
    }
}
