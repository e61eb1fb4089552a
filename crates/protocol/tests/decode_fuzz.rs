//! Property tests of the wire decoder: no input makes it panic, and every envelope it encodes
//! decodes to itself. This is the proptest stand-in for a cargo-fuzz target, which needs a
//! nightly toolchain that this project does not use.

use forum_protocol::*;
use proptest::prelude::*;

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,40}", Just(String::new()), "[a-z]{1,8}"]
}

fn any_id() -> impl Strategy<Value = ChangeId> {
    (any::<u32>(), any::<u64>()).prop_map(|(origin, seq)| ChangeId::new(origin, seq))
}

fn any_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any_text(), any_text()).prop_map(|(name, password)| Request::Register { name, password }),
        (any_text(), any_text()).prop_map(|(name, password)| Request::Login { name, password }),
        Just(Request::ListSubjects),
        (any_text(), any_text()).prop_map(|(title, created_by)| Request::CreateSubject { title, created_by }),
        (any_id(), any_text(), any_text())
            .prop_map(|(subject, author, text)| Request::PostMessage { subject, author, text }),
        (any_id(), proptest::option::of(any_id()), proptest::option::of(any::<u32>()))
            .prop_map(|(subject, before, limit)| Request::History { subject, before, limit }),
        (any_text(), any_text(), any_text()).prop_map(|(from, to, text)| Request::SendPrivate { from, to, text }),
        Just(Request::ListUsers),
        Just(Request::Ping),
        (any::<u64>(), any::<u32>()).prop_map(|(after, limit)| Request::FeedSince { after, limit }),
        any_text().prop_map(|token_hash| Request::CheckSession { token_hash }),
        (any_text(), any::<u64>(), any_text(), any::<u64>()).prop_map(|(webserver, instance, user, lease_ms)| {
            Request::RenewPresence { webserver, instance, users: vec![user], lease_ms }
        }),
    ]
}

/// Decodes `bytes` as every envelope type; only the absence of a panic matters.
fn decode_all(bytes: &[u8]) {
    let _ = decode::<WireRequest>(bytes);
    let _ = decode::<WireReply>(bytes);
    let _ = decode::<WireChange>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn requests_round_trip(id in any::<u64>(), request in any_request()) {
        let envelope = WireRequest { v: PROTOCOL_VERSION, id, request, client: (id % 2 == 0).then_some(id / 2), brief: id % 3 == 0 };
        let decoded: WireRequest = decode(&encode(&envelope)).unwrap();
        prop_assert_eq!(decoded, envelope);
    }

    #[test]
    fn mutated_requests_never_panic(
        request in any_request(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode(&WireRequest { v: PROTOCOL_VERSION, id: 1, request, client: Some(7), brief: true });
        for (index, value) in flips {
            let position = index.index(bytes.len());
            bytes[position] = value;
        }
        decode_all(&bytes);
        let length = cut.index(bytes.len() + 1);
        decode_all(&bytes[..length]);
    }
}

/// MessagePack headers that declare huge lengths must fail cleanly instead of reserving memory.
#[test]
fn huge_declared_lengths_fail_cleanly() {
    let cases: [&[u8]; 4] = [
        b"\xdb\xff\xff\xff\xff",         // str32 of 4 GiB
        b"\xdd\xff\xff\xff\xff",         // array32 of 4 G items
        b"\xdf\xff\xff\xff\xff",         // map32 of 4 G entries
        b"\x83\xa1v\x01\xa2id\x01\xa7request\xdb\x7f\xff\xff\xff",
    ];
    for bytes in cases {
        assert!(decode::<WireRequest>(bytes).is_err(), "accepted {bytes:?}");
    }
}
