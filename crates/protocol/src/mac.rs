//! The authenticated encryption of ZeroMQ messages between the servers of one group.
//!
//! When a cluster key is set, the payload frames of every request, reply and publication are
//! replaced by their sealed form: a random 24-byte nonce, then the XChaCha20-Poly1305 ciphertext
//! of the payload with its 16-byte tag. The encryption key is HKDF-SHA256 of the cluster key.
//! The associated data is a context label followed by each clear frame that the message binds
//! (a publication's topic) as a 4-byte big-endian length and its bytes. The topic stays in
//! clear because a SUB socket filters on its prefix. Routing frames (a ROUTER's identity and
//! REQ's empty delimiter) are not bound, because sockets add and remove them.
//!
//! A message with several payload frames (a `webserver` publication: header and change) is
//! sealed as one payload, the frames' concatenation, under one nonce and one tag. The nonce
//! starts the first payload frame and the tag ends the last, so the message keeps its frames,
//! and the associated data also binds the length of each payload frame but the last.
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

/// The HKDF `info` input that derives the key of subscriber tokens, with which a subscriber
/// to a pub port proves that it has the cluster key (see `zmtp_guard::SubscriberKey`).
const SUBSCRIBER_KEY_DERIVATION_INFO: &[u8] = b"forum cluster key: pub port subscriber token key, version 1";

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

    /// Returns the associated data: the label, then each bound frame with its length, then
    /// the length of each payload frame but the last. A message with one payload frame adds
    /// no length, so its associated data is the same as before payloads could have several
    /// frames.
    fn associated_data(self, bound_frames: &[Bytes], payload_lengths: &[usize]) -> Vec<u8> {
        let frame_bytes: usize = bound_frames.iter().map(|frame| 4 + frame.len()).sum();
        let length_bytes = 4 * payload_lengths.len().saturating_sub(1);
        let mut data = Vec::with_capacity(self.label().len() + frame_bytes + length_bytes);
        data.extend_from_slice(self.label());
        for frame in bound_frames {
            data.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            data.extend_from_slice(frame);
        }
        if let Some((_last, leading)) = payload_lengths.split_last() {
            for length in leading {
                data.extend_from_slice(&(*length as u32).to_be_bytes());
            }
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
    subscriber_key: [u8; 32],
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
        let mut subscriber_key = [0u8; 32];
        Hkdf::<Sha256>::new(None, secret)
            .expand(SUBSCRIBER_KEY_DERIVATION_INFO, &mut subscriber_key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Ok(ClusterKey { cipher: Arc::new(cipher), subscriber_key })
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

    /// Returns the key for subscriber tokens on a pub port, derived from the cluster key
    /// apart from the message key.
    pub fn subscriber_key(&self) -> &[u8; 32] {
        &self.subscriber_key
    }

    /// Generates a random key of 64 hexadecimal characters.
    pub fn generate() -> (ClusterKey, String) {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let text: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let key = ClusterKey::new(text.as_bytes(), "a generated key").expect("64 characters are enough");
        (key, text)
    }

    /// Returns the sealed form of the concatenated `payload` frames: the nonce, the
    /// ciphertext and the tag, in one buffer.
    fn encrypt(&self, nonce: &[u8; NONCE_LEN], associated_data: &[u8], payload: &[Bytes]) -> Vec<u8> {
        let payload_len: usize = payload.iter().map(Bytes::len).sum();
        let mut sealed = Vec::with_capacity(SEAL_OVERHEAD + payload_len);
        sealed.extend_from_slice(nonce);
        for frame in payload {
            sealed.extend_from_slice(frame);
        }
        let tag = self
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(nonce), associated_data, &mut sealed[NONCE_LEN..])
            .expect("XChaCha20-Poly1305 encrypts payloads of up to 256 GiB");
        sealed.extend_from_slice(&tag);
        sealed
    }

    /// Returns the concatenated payload of sealed frames, whose first frame starts with the
    /// nonce and whose last ends with the tag. Returns `None` when they fail authentication
    /// or are too short to hold the nonce and the tag.
    fn decrypt(&self, associated_data: &[u8], sealed: &[Bytes]) -> Option<Vec<u8>> {
        let first = sealed.first()?;
        let last = sealed.last()?;
        let nonce = first.get(..NONCE_LEN)?;
        let tag = last.get(last.len().checked_sub(TAG_LEN)?..)?;
        let sealed_len: usize = sealed.iter().map(Bytes::len).sum();
        let mut payload = Vec::with_capacity(sealed_len.checked_sub(SEAL_OVERHEAD)?);
        let last_index = sealed.len() - 1;
        for (index, frame) in sealed.iter().enumerate() {
            let start = if index == 0 { NONCE_LEN } else { 0 };
            let end = if index == last_index { frame.len().checked_sub(TAG_LEN)? } else { frame.len() };
            payload.extend_from_slice(frame.get(start..end)?);
        }
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
    seal_frames(key, context, frames, covered, 1);
}

/// Seals the last `encrypted` of the `covered` frames at the end of `frames` when a key is set.
/// It encrypts those payload frames as one payload under one nonce and one tag. The covered
/// frames before them stay in clear and are bound as associated data. Each frame keeps its
/// place: the first payload frame gets the nonce in front and the last the tag at its end.
/// With `encrypted` = 1 this is [`seal`]. Without a key, the frames are left as they are.
///
/// # Panics
///
/// When a key is set and `encrypted` is 0 or more than `frames.len()`: sending such a message
/// would put its payload on the wire in clear.
pub fn seal_frames(key: Option<&ClusterKey>, context: MacContext, frames: &mut [Bytes], covered: usize, encrypted: usize) {
    let Some(key) = key else { return };
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    seal_with_nonce(key, context, frames, covered, encrypted, &nonce);
}

fn seal_with_nonce(
    key: &ClusterKey,
    context: MacContext,
    frames: &mut [Bytes],
    covered: usize,
    encrypted: usize,
    nonce: &[u8; NONCE_LEN],
) {
    assert!(
        (1..=frames.len()).contains(&encrypted),
        "sealing {encrypted} payload frames of a {}-frame message",
        frames.len()
    );
    let (before, payload) = frames.split_at_mut(frames.len() - encrypted);
    let start = before.len().saturating_sub(covered.saturating_sub(encrypted));
    let payload_lengths: Vec<usize> = payload.iter().map(Bytes::len).collect();
    let associated_data = context.associated_data(&before[start..], &payload_lengths);
    let sealed = Bytes::from(key.encrypt(nonce, &associated_data, payload));

    // Cuts the sealed buffer back into frames without copying: the nonce goes with the first
    // payload frame and the tag with the last.
    let mut offset = 0;
    let last = payload.len() - 1;
    for (index, (frame, length)) in payload.iter_mut().zip(payload_lengths).enumerate() {
        let end = offset + length + if index == 0 { NONCE_LEN } else { 0 } + if index == last { TAG_LEN } else { 0 };
        *frame = sealed.slice(offset..end);
        offset = end;
    }
}

/// Opens a message sealed by [`seal`] with the same `context` and `covered` when a key is set:
/// it decrypts the last frame in place after checking it with the covered clear frames before
/// it. Without a key, the frames are left as they are, and on an error they are unchanged.
pub fn unseal(key: Option<&ClusterKey>, context: MacContext, frames: &mut [Bytes], covered: usize) -> Result<(), MacError> {
    unseal_frames(key, context, frames, covered, 1)
}

/// Opens a message sealed by [`seal_frames`] with the same `context`, `covered` and
/// `encrypted` when a key is set. It checks the last `encrypted` frames with the covered clear
/// frames before them, then decrypts them in place. Without a key, the frames are left
/// as they are, and on an error they are unchanged.
pub fn unseal_frames(
    key: Option<&ClusterKey>,
    context: MacContext,
    frames: &mut [Bytes],
    covered: usize,
    encrypted: usize,
) -> Result<(), MacError> {
    let Some(key) = key else { return Ok(()) };
    if encrypted == 0 || frames.len() < encrypted {
        return Err(MacError::Missing);
    }
    let (before, sealed) = frames.split_at_mut(frames.len() - encrypted);
    let bound = covered.saturating_sub(encrypted);
    if before.len() < bound {
        return Err(MacError::Missing);
    }

    // The payload length of each frame: the first loses the nonce and the last the tag. A
    // frame too short for them was not sealed.
    let last = sealed.len() - 1;
    let mut payload_lengths = Vec::with_capacity(sealed.len());
    for (index, frame) in sealed.iter().enumerate() {
        let overhead = if index == 0 { NONCE_LEN } else { 0 } + if index == last { TAG_LEN } else { 0 };
        payload_lengths.push(frame.len().checked_sub(overhead).ok_or(MacError::Missing)?);
    }

    let associated_data = context.associated_data(&before[before.len() - bound..], &payload_lengths);
    let payload = Bytes::from(key.decrypt(&associated_data, sealed).ok_or(MacError::Invalid)?);
    let mut offset = 0;
    for (frame, length) in sealed.iter_mut().zip(payload_lengths) {
        *frame = payload.slice(offset..offset + length);
        offset += length;
    }
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
        seal_with_nonce(&key(), MacContext::Publication, &mut frames, 2, 1, &nonce);
        let hex: String = frames[1].iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(hex, GOLDEN);
    }

    const GOLDEN: &str = "000102030405060708090a0b0c0d0e0f1011121314151617e046771eadb47a2ab4604ad1736e633864d3bbbc";

    fn feed_publication() -> Vec<Bytes> {
        vec![Bytes::from_static(b"webserver"), Bytes::from_static(b"private header"), Bytes::from_static(b"private change, long enough to hold a nonce and a tag")]
    }

    #[test]
    fn seal_frames_keeps_each_frame() {
        let mut frames = feed_publication();
        seal_frames(Some(&key()), MacContext::Publication, &mut frames, 3, 2);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], Bytes::from_static(b"webserver"));
        assert_eq!(frames[1].len(), NONCE_LEN + b"private header".len(), "the nonce starts the first payload frame");
        assert_eq!(frames[2].len(), feed_publication()[2].len() + TAG_LEN, "the tag ends the last payload frame");
        for frame in &frames[1..] {
            assert!(!frame.windows(7).any(|window| window == b"private"), "a payload frame is in clear");
        }

        assert_eq!(unseal_frames(Some(&key()), MacContext::Publication, &mut frames, 3, 2), Ok(()));
        assert_eq!(frames, feed_publication());
    }

    #[test]
    fn unseal_frames_rejects_altered_messages() {
        let mut sealed = feed_publication();
        seal_frames(Some(&key()), MacContext::Publication, &mut sealed, 3, 2);

        let mut other_topic = sealed.clone();
        other_topic[0] = Bytes::from_static(b"checkpoint");
        assert_eq!(unseal_frames(Some(&key()), MacContext::Publication, &mut other_topic, 3, 2), Err(MacError::Invalid));
        assert_eq!(other_topic[1..], sealed[1..], "a failed unseal changed the frames");

        // The concatenated ciphertext stays the same when a byte moves from one frame to the
        // next, so only the bound length of the first frame detects it.
        let mut moved = sealed.clone();
        let first = moved[1].clone();
        moved[1] = first.slice(..first.len() - 1);
        moved[2] = Bytes::from([&first[first.len() - 1..], &moved[2][..]].concat());
        assert_eq!(unseal_frames(Some(&key()), MacContext::Publication, &mut moved, 3, 2), Err(MacError::Invalid));

        let mut flipped = sealed.clone();
        let mut change = flipped[2].to_vec();
        change[0] ^= 1;
        flipped[2] = Bytes::from(change);
        assert_eq!(unseal_frames(Some(&key()), MacContext::Publication, &mut flipped, 3, 2), Err(MacError::Invalid));

        // Opening the message as one with a single payload frame fails, and so does opening
        // it with the header moved into the associated data.
        let mut as_single = sealed.clone();
        assert_eq!(unseal(Some(&key()), MacContext::Publication, &mut as_single, 3), Err(MacError::Invalid));
        let mut fewer_encrypted = sealed.clone();
        assert_eq!(unseal_frames(Some(&key()), MacContext::Publication, &mut fewer_encrypted, 3, 1), Err(MacError::Invalid));

        let mut without_header = vec![sealed[0].clone(), sealed[2].clone()];
        assert_eq!(unseal_frames(Some(&key()), MacContext::Publication, &mut without_header, 3, 2), Err(MacError::Missing));
        let mut short = vec![sealed[0].clone(), Bytes::from_static(b"short"), sealed[2].clone()];
        assert_eq!(unseal_frames(Some(&key()), MacContext::Publication, &mut short, 3, 2), Err(MacError::Missing));
        let mut no_tag = vec![sealed[0].clone(), sealed[1].clone(), Bytes::from_static(b"tag")];
        assert_eq!(unseal_frames(Some(&key()), MacContext::Publication, &mut no_tag, 3, 2), Err(MacError::Missing));
    }

    #[test]
    fn seal_frames_of_one_frame_is_seal() {
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|index| index as u8);
        let mut frames = vec![Bytes::from_static(b"webserver"), Bytes::from_static(b"ping")];
        seal_with_nonce(&key(), MacContext::Publication, &mut frames, 2, 1, &nonce);
        let mut keyless = vec![Bytes::from_static(b"ping")];
        seal_frames(None, MacContext::Publication, &mut keyless, 2, 2);
        assert_eq!(keyless, vec![Bytes::from_static(b"ping")]);
        assert_eq!(unseal_frames(Some(&key()), MacContext::Publication, &mut frames, 2, 1), Ok(()));
        assert_eq!(frames[1], Bytes::from_static(b"ping"));
    }

    #[test]
    #[should_panic(expected = "sealing 0 payload frames")]
    fn seal_frames_rejects_no_payload() {
        let mut frames = vec![Bytes::from_static(b"webserver"), Bytes::from_static(b"ping")];
        seal_frames(Some(&key()), MacContext::Publication, &mut frames, 2, 0);
    }

    #[test]
    #[should_panic(expected = "sealing 3 payload frames of a 2-frame message")]
    fn seal_frames_rejects_missing_frames() {
        let mut frames = vec![Bytes::from_static(b"webserver"), Bytes::from_static(b"ping")];
        seal_frames(Some(&key()), MacContext::Publication, &mut frames, 3, 3);
    }

    #[test]
    fn sealed_frames_golden_bytes() {
        // The key, the nonce and the label are those of `sealed_golden_bytes`; the message is
        // the publication ["webserver", "head", "ping"] with its last two frames encrypted.
        // Computed independently with tests/interop/xchacha.py, as in that test.
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|index| index as u8);
        let mut frames = vec![Bytes::from_static(b"webserver"), Bytes::from_static(b"head"), Bytes::from_static(b"ping")];
        seal_with_nonce(&key(), MacContext::Publication, &mut frames, 3, 2, &nonce);
        let hex = |frame: &Bytes| -> String { frame.iter().map(|byte| format!("{byte:02x}")).collect() };
        assert_eq!(hex(&frames[1]), GOLDEN_HEADER);
        assert_eq!(hex(&frames[2]), GOLDEN_CHANGE);
    }

    const GOLDEN_HEADER: &str = "000102030405060708090a0b0c0d0e0f1011121314151617f84a781d";
    const GOLDEN_CHANGE: &str = "c9a95cee3896f1afba0ed26579205e506a8d0afc";

    #[test]
    fn subscriber_key_derived_per_cluster_key() {
        assert_eq!(key().subscriber_key(), key().subscriber_key());
        let other = ClusterKey::new(&[8u8; 32], "test").unwrap();
        assert_ne!(key().subscriber_key(), other.subscriber_key());
        assert_ne!(key().subscriber_key(), &[7u8; 32], "the secret itself is not the token key");
    }

    #[test]
    fn short_key_rejected() {
        assert!(matches!(ClusterKey::new(b"short", "test"), Err(KeyError::TooShort { length: 5, .. })));
        assert!(ClusterKey::from_file_or_text(None, Some("  ")).unwrap().is_none());
    }
}
