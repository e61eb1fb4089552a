//! MessagePack encoding of envelopes, with a protocol-version check on decoding.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::nesting::{check_nesting, MAX_NESTING};
use crate::{Change, FeedNote, ServerId, PROTOCOL_VERSION};

/// The error for bytes that are not a valid envelope of this protocol version.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unsupported protocol version {found}; this program speaks version {expected}")]
    UnsupportedVersion { found: u16, expected: u16 },
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes an envelope as MessagePack with named fields (maps, not arrays).
pub fn encode<T: Serialize>(envelope: &T) -> Vec<u8> {
    // Most envelopes carry one post; starting at that size saves the growth steps.
    let mut bytes = Vec::with_capacity(ENCODE_CAPACITY);
    // NOTE: encoding our own types into a Vec cannot fail: they have string keys and no
    // serializer-rejected values, so the only error source would be a failed allocation.
    rmp_serde::encode::write_named(&mut bytes, envelope).expect("encoding a protocol envelope into memory");
    bytes
}

/// Encodes an envelope as [`encode`] does, appending it to `writer`, such as a connection's
/// write buffer.
pub fn encode_into<T: Serialize, W: std::io::Write>(writer: &mut W, envelope: &T) {
    // NOTE: as in `encode`, only a failed write could fail, and writers into memory do not.
    rmp_serde::encode::write_named(writer, envelope).expect("encoding a protocol envelope into memory");
}

/// The starting capacity of an encoding buffer: an encoded change with a 140-byte post
/// takes about 300 bytes.
const ENCODE_CAPACITY: usize = 384;

/// Encodes a change as a [`WireChange`](crate::WireChange), without copying it.
pub fn encode_change(change: &Change) -> Vec<u8> {
    #[derive(Serialize)]
    struct WireChangeRef<'a> {
        v: u16,
        change: &'a Change,
    }
    encode(&WireChangeRef { v: PROTOCOL_VERSION, change })
}

/// Encodes the [`WireFeedHeader`](crate::WireFeedHeader) of the change at `position` in
/// `server`'s feed, the header frame of its `webserver` message.
pub fn encode_feed_header(server: ServerId, position: u64, note: FeedNote) -> Vec<u8> {
    let header = crate::WireFeedHeader { v: PROTOCOL_VERSION, server, position, note };
    let mut bytes = Vec::with_capacity(FEED_HEADER_CAPACITY);
    encode_into(&mut bytes, &header);
    bytes
}

/// The starting capacity of an encoded feed header. The largest header, with both note fields
/// and the largest ids and position, takes 89 bytes.
const FEED_HEADER_CAPACITY: usize = 96;

/// Decodes an envelope, first checking that its `v` field is [`PROTOCOL_VERSION`].
///
/// The version is read alone first, so a peer speaking another version gets a clear
/// [`CodecError::UnsupportedVersion`] even when the rest of its message has another shape.
/// Before either step, the structure is scanned without recursion, so hostile nesting is
/// rejected instead of overflowing the stack.
///
/// `T` must have a `v` field, as every envelope of this protocol does.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    check_nesting(bytes, MAX_NESTING).map_err(CodecError::Malformed)?;
    if starts_with_current_version(bytes) {
        // This skips the separate read of the version. A second `v` field, which that read
        // rejects as a duplicate, is still rejected, because `T`'s own decoding does the same.
        return rmp_serde::from_slice(bytes).map_err(|error| CodecError::Malformed(error.to_string()));
    }
    #[derive(Deserialize)]
    struct VersionOnly {
        v: u16,
    }
    let version: VersionOnly =
        rmp_serde::from_slice(bytes).map_err(|error| CodecError::Malformed(error.to_string()))?;
    if version.v != PROTOCOL_VERSION {
        return Err(CodecError::UnsupportedVersion { found: version.v, expected: PROTOCOL_VERSION });
    }
    rmp_serde::from_slice(bytes).map_err(|error| CodecError::Malformed(error.to_string()))
}

/// Returns whether `bytes` are a map whose first entry is `v` = [`PROTOCOL_VERSION`] in the
/// form that [`encode`] writes: a fixmap, the one-letter fixstr key and a positive fixint.
/// Any other form returns false, which leaves the envelope to the general decoding.
fn starts_with_current_version(bytes: &[u8]) -> bool {
    const _: () = assert!(PROTOCOL_VERSION <= 0x7f, "the version is written as a positive fixint");
    matches!(bytes, [0x81..=0x8f, 0xa1, b'v', version, ..] if u16::from(*version) == PROTOCOL_VERSION)
}

/// Returns the `id` field of an envelope that [`decode`] rejects (too large, another protocol
/// version or another shape), when it has one, so the error reply can carry it back and a
/// pipelining client learns which request failed.
pub fn peek_request_id(bytes: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: u64,
    }
    check_nesting(bytes, MAX_NESTING).ok()?;
    rmp_serde::from_slice::<IdOnly>(bytes).ok().map(|envelope| envelope.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn sample_change() -> Change {
        Change {
            id: ChangeId::new(2, 17),
            lamport: 40,
            time: 1_700_000_000_000,
            kind: ChangeKind::MessagePosted {
                message: Message {
                    id: ChangeId::new(2, 17),
                    subject: ChangeId::new(1, 3),
                    author: "ana".into(),
                    text: "hola".into(),
                    time: 1_700_000_000_000,
                    lamport: 40,
                },
            },
            key: None,
        }
    }

    /// These bytes are the wire format. If this test fails, the format changed: bump
    /// PROTOCOL_VERSION and update the bytes on purpose, never by accident.
    #[test]
    fn request_golden_bytes() {
        let request = WireRequest { v: PROTOCOL_VERSION, id: 7, request: Request::ListSubjects, client: None, brief: false };
        assert_eq!(hex(&encode(&request)), "83a17601a2696407a772657175657374ac4c6973745375626a65637473");

        let login = WireRequest {
            v: PROTOCOL_VERSION,
            id: 8,
            request: Request::Login { name: "ana".into(), password: "secret12".into() },
            client: None,
            brief: false,
        };
        assert_eq!(
            hex(&encode(&login)),
            concat!(
                "83a17601a2696408a772657175657374",
                "81a54c6f67696e82a46e616d65a3616e61a870617373776f7264a87365637265743132"
            )
        );
    }

    #[test]
    fn change_golden_bytes() {
        let wire = WireChange { v: PROTOCOL_VERSION, change: sample_change() };
        assert_eq!(
            hex(&encode(&wire)),
            concat!(
                "82a17601a66368616e676584a26964a4322d3137a76c616d706f727428a474696d65cf0000018bcfe56800",
                "a46b696e6481ad4d657373616765506f7374656481a76d65737361676586a26964a4322d3137a77375626a656374",
                "a3312d33a6617574686f72a3616e61a474657874a4686f6c61a474696d65cf0000018bcfe56800a76c616d706f727428"
            )
        );
    }

    #[test]
    fn reply_golden_bytes() {
        let reply = WireReply {
            v: PROTOCOL_VERSION,
            id: 9,
            reply: Reply::error(ErrorCode::UnknownSubject, "no subject 1-3"),
        };
        assert_eq!(
            hex(&encode(&reply)),
            concat!(
                "83a17601a2696409a57265706c79",
                "81a54572726f7282a4636f6465ae556e6b6e6f776e5375626a656374a76d657373616765ae6e6f207375626a65637420312d33"
            )
        );
    }

    /// A heartbeat's vector is a map from origin id (an integer key) to sequence number.
    #[test]
    fn heartbeat_golden_bytes() {
        let heartbeat = Heartbeat {
            server: 2,
            fetch_endpoint: "tcp://h:1".into(),
            vector: VersionVector::from([(1, 5), (2, 300)]),
            time: 7,
        };
        let wire = WireHeartbeat { v: PROTOCOL_VERSION, heartbeat };
        assert_eq!(hex(&encode(&wire)), concat!(
            "82a17601a968656172746265617484a673657276657202ae66657463685f656e64706f696e74",
            "a97463703a2f2f683a31a6766563746f7282010502cd012ca474696d6507"
        ));
        let decoded: WireHeartbeat = decode(&encode(&wire)).unwrap();
        assert_eq!(decoded, wire);
    }

    #[test]
    fn fetch_request_golden_bytes() {
        let request = WireRequest {
            v: PROTOCOL_VERSION,
            id: 3,
            request: Request::FetchChanges { origin: 2, after_seq: 40, limit: 1000 },
            client: None,
            brief: false,
        };
        assert_eq!(hex(&encode(&request)), concat!(
                "83a17601a2696403a77265717565737481ac46657463684368616e67657383a66f726967696e02",
                "a961667465725f73657128a56c696d6974cd03e8"
            ));
    }

    /// `client` and `key` are left out when empty, so the golden bytes above stay valid; when
    /// set they round-trip.
    #[test]
    fn idempotency_fields_round_trip() {
        let request = WireRequest { v: PROTOCOL_VERSION, id: 7, request: Request::ListSubjects, client: Some(99), brief: false };
        assert_eq!(decode::<WireRequest>(&encode(&request)).unwrap(), request);

        let mut change = sample_change();
        change.key = Some(IdempotencyKey { client: 99, request: 7 });
        let wire = WireChange { v: PROTOCOL_VERSION, change };
        assert_eq!(decode::<WireChange>(&encode(&wire)).unwrap(), wire);
    }

    #[test]
    fn envelopes_round_trip() {
        let wire = WireChange { v: PROTOCOL_VERSION, change: sample_change() };
        let decoded: WireChange = decode(&encode(&wire)).unwrap();
        assert_eq!(decoded, wire);
    }

    #[test]
    fn decode_rejects_other_versions() {
        let request = WireRequest { v: 99, id: 1, request: Request::Ping, client: None, brief: false };
        match decode::<WireRequest>(&encode(&request)) {
            Err(CodecError::UnsupportedVersion { found: 99, expected: PROTOCOL_VERSION }) => {}
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
    }

    /// The shortcut for envelopes that start with the current version must give the same
    /// results as the general decoding, also for a second `v` field and for a body of
    /// another shape.
    #[test]
    fn version_shortcut_matches_general_decoding() {
        let request = WireRequest { v: PROTOCOL_VERSION, id: 5, request: Request::Ping, client: None, brief: false };
        let bytes = encode(&request);
        assert!(starts_with_current_version(&bytes));
        assert_eq!(decode::<WireRequest>(&bytes).unwrap(), request);

        // {"v": 1, "id": 5, "request": "Ping", "v": 2}
        let duplicate = b"\x84\xa1v\x01\xa2id\x05\xa7request\xa4Ping\xa1v\x02";
        match decode::<WireRequest>(duplicate) {
            Err(CodecError::Malformed(message)) => assert!(message.contains("duplicate field `v`"), "{message}"),
            other => panic!("expected a duplicate-field error, got {other:?}"),
        }
        // {"v": 2, "id": 5, "request": "Ping", "v": 1} takes the general path, which rejects
        // the duplicate before it looks at the version.
        let duplicate_first_other = b"\x84\xa1v\x02\xa2id\x05\xa7request\xa4Ping\xa1v\x01";
        assert!(!starts_with_current_version(duplicate_first_other));
        assert!(matches!(decode::<WireRequest>(duplicate_first_other), Err(CodecError::Malformed(_))));

        // {"v": 1, "id": 5, "request": "Teleport"}
        let unknown = b"\x83\xa1v\x01\xa2id\x05\xa7request\xa8Teleport";
        assert!(starts_with_current_version(unknown));
        assert!(matches!(decode::<WireRequest>(unknown), Err(CodecError::Malformed(_))));

        // The version as a uint8 (0xcc 0x01) is valid MessagePack that encode does not write.
        let wide = b"\x83\xa1v\xcc\x01\xa2id\x05\xa7request\xa4Ping";
        assert!(!starts_with_current_version(wide));
        assert_eq!(decode::<WireRequest>(wide).unwrap(), request);
    }

    #[test]
    fn decode_rejects_garbage() {
        for bytes in [&b""[..], b"\xff\xff", b"\x81\xa1v\x01", b"\x83\xa1v\x01\xa2id\x01\xa7request\xa4Nope"] {
            assert!(matches!(decode::<WireRequest>(bytes), Err(CodecError::Malformed(_))), "accepted {bytes:?}");
        }
    }

    #[test]
    fn rejected_request_keeps_its_id() {
        #[derive(Serialize)]
        struct Future {
            v: u16,
            id: u64,
            request: &'static str,
        }
        let bytes = encode(&Future { v: PROTOCOL_VERSION + 1, id: 42, request: "Teleport" });
        assert!(decode::<WireRequest>(&bytes).is_err());
        assert_eq!(peek_request_id(&bytes), Some(42));
        assert_eq!(peek_request_id(b"\xc1 not messagepack"), None);
    }

    #[test]
    fn borrowed_encodings_match_owned_ones() {
        let change = sample_change();
        assert_eq!(encode_change(&change), encode(&WireChange { v: PROTOCOL_VERSION, change: change.clone() }));
        let header = WireFeedHeader { v: PROTOCOL_VERSION, server: 4, position: 9, note: FeedNote::default() };
        assert_eq!(encode_feed_header(4, 9, FeedNote::default()), encode(&header));
        let note = FeedNote { hidden: false, replaces: Some(ChangeId::new(3, 7)) };
        let header = WireFeedHeader { note, ..header };
        assert_eq!(encode_feed_header(4, 9, note), encode(&header));
        let decoded: WireFeedHeader = decode(&encode_feed_header(4, 9, note)).unwrap();
        assert_eq!(decoded, header);
    }

    /// A plain note is left out, so the header of most changes has three fields.
    #[test]
    fn feed_header_golden_bytes() {
        assert_eq!(hex(&encode_feed_header(2, 300, FeedNote::default())), "83a17601a673657276657202a8706f736974696f6ecd012c");
        let note = FeedNote { hidden: true, replaces: Some(ChangeId::new(3, 7)) };
        assert_eq!(
            hex(&encode_feed_header(2, 300, note)),
            concat!(
                "84a17601a673657276657202a8706f736974696f6ecd012c",
                "a46e6f746582a668696464656ec3a87265706c61636573a3332d37"
            )
        );
    }

    #[test]
    fn largest_feed_header_fits_capacity() {
        let note = FeedNote { hidden: true, replaces: Some(ChangeId::new(ServerId::MAX, u64::MAX)) };
        let header = encode_feed_header(ServerId::MAX, u64::MAX, note);
        assert_eq!(header.len(), 89, "the largest header");
        assert!(header.len() <= FEED_HEADER_CAPACITY);
    }

    #[test]
    fn redacted_change_has_no_password_hash() {
        let change = Change {
            id: ChangeId::new(1, 1),
            lamport: 1,
            time: 0,
            kind: ChangeKind::UserRegistered {
                user: User { id: ChangeId::new(1, 1), name: "ana".into(), time: 0 },
                password_hash: "$argon2id$secret".into(),
            },
            key: None,
        };
        let encoded = encode(&WireChange { v: PROTOCOL_VERSION, change: change.redacted() });
        assert!(!String::from_utf8_lossy(&encoded).contains("argon2"));
    }
}
