//! Rewriting of the client's READY command so that its Identity property is the
//! client's address.
//!
//! A zeromq 0.7 ROUTER takes each connection's routing id from the Identity
//! property of the peer's READY command, or makes a random one without it
//! (`ready_exchange` in its `util.rs`). Behind a guard the ROUTER accepts only
//! the guard's loopback connections, so the guard replaces that property with the
//! client's `IP:PORT` as text. The server can then name the host that sent each
//! message, and no client can choose the routing id of another connection.
//!
//! The READY command has the same form in ZMTP 3.0 and 3.1 (RFC 23 and RFC 37):
//!
//! ```text
//! ready    = command-size %d5 "READY" *property
//! property = name-size name value-size value   ; 1-octet name size, 4-octet big-endian value size
//! ```

use std::borrow::Cow;
use std::net::SocketAddr;

use crate::checker::{Violation, FLAG_COMMAND, FLAG_LONG, GREETING_LEN, READY_PREFIX};
use crate::limits::MAX_COMMAND_BYTES;

/// The property that zeromq 0.7 reads a connection's routing id from. zeromq
/// matches the name case-sensitively, but the guard removes it in any case.
const IDENTITY_PROPERTY: &[u8] = b"Identity";

/// The maximum length of a routing id in bytes (`PeerIdentity::MAX_LENGTH` in zeromq 0.7).
const MAX_IDENTITY_BYTES: usize = 255;

#[derive(Debug)]
enum State {
    /// `received` greeting bytes have been relayed unchanged.
    Greeting { received: usize },
    /// The bytes of the READY frame received so far, its header included.
    Ready { frame: Vec<u8> },
    /// The rewritten READY has been emitted, and later bytes pass unchanged.
    Done,
}

/// Replaces the Identity property of the first command after the greeting with
/// a fixed routing id, and passes every other byte unchanged.
///
/// It expects bytes that a [`ZmtpChecker`](crate::ZmtpChecker) has accepted,
/// so the first frame after the greeting is a READY command of at most
/// [`MAX_COMMAND_BYTES`]. It holds back that frame until its last byte
/// arrives, so it buffers at most one command frame.
#[derive(Debug)]
pub(crate) struct ReadyRewriter {
    identity: Vec<u8>,
    state: State,
}

impl ReadyRewriter {
    /// Creates a rewriter that sets the routing id to `peer` as text, such as
    /// `203.0.113.5:40112` or `[2001:db8::1]:40112`.
    pub(crate) fn for_peer(peer: SocketAddr) -> Self {
        let identity = peer.to_string().into_bytes();
        // The longest socket address text, an IPv6 address with a scope id and
        // a port, has 64 characters.
        assert!(identity.len() <= MAX_IDENTITY_BYTES, "a socket address as text is shorter than 256 bytes");
        Self { identity, state: State::Greeting { received: 0 } }
    }

    /// Returns true once the READY command has been rewritten.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Takes the next client bytes and returns the bytes to relay in their place.
    ///
    /// The output may be empty while a READY frame is incomplete. Returns
    /// [`Violation::InvalidReady`] if the READY property list is malformed.
    pub(crate) fn rewrite<'a>(&mut self, bytes: &'a [u8]) -> Result<Cow<'a, [u8]>, Violation> {
        if self.is_done() {
            return Ok(Cow::Borrowed(bytes));
        }

        let mut output = Vec::with_capacity(bytes.len() + self.identity.len());
        let mut position = 0;
        while position < bytes.len() {
            let rest = &bytes[position..];
            match &mut self.state {
                State::Greeting { received } => {
                    let taken = (GREETING_LEN - *received).min(rest.len());
                    output.extend_from_slice(&rest[..taken]);
                    position += taken;
                    *received += taken;
                    if *received == GREETING_LEN {
                        self.state = State::Ready { frame: Vec::new() };
                    }
                }
                State::Ready { frame } => {
                    let taken = missing_frame_bytes(frame)?.min(rest.len());
                    frame.extend_from_slice(&rest[..taken]);
                    position += taken;
                    if missing_frame_bytes(frame)? == 0 {
                        let header_len = header_len(frame[0]);
                        let body = encode_ready(&frame[header_len..], &self.identity)?;
                        push_command_frame(&mut output, &body);
                        self.state = State::Done;
                    }
                }
                State::Done => {
                    output.extend_from_slice(rest);
                    position = bytes.len();
                }
            }
        }
        Ok(Cow::Owned(output))
    }
}

fn header_len(flags: u8) -> usize {
    if flags & FLAG_LONG != 0 {
        9
    } else {
        2
    }
}

/// Returns the body size that a complete frame header declares.
fn declared_size(frame: &[u8]) -> u64 {
    match header_len(frame[0]) {
        2 => u64::from(frame[1]),
        _ => u64::from_be_bytes(frame[1..9].try_into().expect("a long header has 8 size bytes")),
    }
}

/// Returns how many more bytes to take before the next decision: the flags
/// byte, the rest of the header, or the rest of the body. Returns 0 when the
/// frame is complete.
fn missing_frame_bytes(frame: &[u8]) -> Result<usize, Violation> {
    let Some(&flags) = frame.first() else { return Ok(1) };
    let header_len = header_len(flags);
    if frame.len() < header_len {
        return Ok(header_len - frame.len());
    }
    // The checker has already rejected a larger command, and this bound keeps
    // the buffer small even without it.
    let size = declared_size(frame);
    if size > MAX_COMMAND_BYTES {
        return Err(Violation::CommandTooLarge { size, max: MAX_COMMAND_BYTES });
    }
    Ok(header_len + size as usize - frame.len())
}

/// Returns the READY body `body` with every Identity property removed and
/// `identity` appended as the Identity property.
fn encode_ready(body: &[u8], identity: &[u8]) -> Result<Vec<u8>, Violation> {
    let invalid = |reason| Violation::InvalidReady { reason };
    let Some(mut properties) = body.strip_prefix(READY_PREFIX) else {
        return Err(invalid("the command is not READY"));
    };

    let mut output = Vec::with_capacity(body.len() + identity.len() + 16);
    output.extend_from_slice(READY_PREFIX);
    while let Some((&name_len, rest)) = properties.split_first() {
        let name_len = usize::from(name_len);
        let Some((name, rest)) = rest.split_at_checked(name_len) else {
            return Err(invalid("a property name exceeds the command"));
        };
        let Some((value_len, rest)) = rest.split_first_chunk::<4>() else {
            return Err(invalid("a property value size is missing"));
        };
        let value_len = u32::from_be_bytes(*value_len) as usize;
        let Some((_value, rest)) = rest.split_at_checked(value_len) else {
            return Err(invalid("a property value exceeds the command"));
        };
        let property_len = 1 + name_len + 4 + value_len;
        let property = &properties[..property_len];
        if !name.eq_ignore_ascii_case(IDENTITY_PROPERTY) {
            output.extend_from_slice(property);
        }
        properties = rest;
    }

    output.push(IDENTITY_PROPERTY.len() as u8);
    output.extend_from_slice(IDENTITY_PROPERTY);
    output.extend_from_slice(&(identity.len() as u32).to_be_bytes());
    output.extend_from_slice(identity);
    Ok(output)
}

/// Appends a command frame with `body`, with a 1-byte size up to 255 bytes
/// and an 8-byte size above.
fn push_command_frame(output: &mut Vec<u8>, body: &[u8]) {
    match u8::try_from(body.len()) {
        Ok(size) => output.extend_from_slice(&[FLAG_COMMAND, size]),
        Err(_) => {
            output.push(FLAG_COMMAND | FLAG_LONG);
            output.extend_from_slice(&(body.len() as u64).to_be_bytes());
        }
    }
    output.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "127.0.0.1:40112";

    fn rewriter() -> ReadyRewriter {
        ReadyRewriter::for_peer(PEER.parse().unwrap())
    }

    fn greeting(minor: u8) -> Vec<u8> {
        let mut bytes = vec![0u8; GREETING_LEN];
        bytes[0] = 0xFF;
        bytes[9] = 0x7F;
        bytes[10] = 3;
        bytes[11] = minor;
        bytes[12..16].copy_from_slice(b"NULL");
        bytes
    }

    fn ready_body(properties: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut body = READY_PREFIX.to_vec();
        for (name, value) in properties {
            body.push(name.len() as u8);
            body.extend_from_slice(name);
            body.extend_from_slice(&(value.len() as u32).to_be_bytes());
            body.extend_from_slice(value);
        }
        body
    }

    /// Encodes a command frame, with the 8-byte size when `long` is set.
    fn command_frame(body: &[u8], long: bool) -> Vec<u8> {
        let mut bytes = if long {
            let mut header = vec![FLAG_COMMAND | FLAG_LONG];
            header.extend_from_slice(&(body.len() as u64).to_be_bytes());
            header
        } else {
            vec![FLAG_COMMAND, body.len() as u8]
        };
        bytes.extend_from_slice(body);
        bytes
    }

    /// A one-frame message that follows the READY command.
    const MESSAGE: &[u8] = b"\x00\x05hello";

    /// Splits the first command frame of `bytes` into its header length and
    /// its properties, and returns them with the bytes after the frame.
    fn parse_command(bytes: &[u8]) -> (usize, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>) {
        let header_len = header_len(bytes[0]);
        let size = declared_size(bytes) as usize;
        let body = &bytes[header_len..header_len + size];
        let mut properties = Vec::new();
        let mut rest = body.strip_prefix(READY_PREFIX).expect("a READY command");
        while let Some((&name_len, after)) = rest.split_first() {
            let (name, after) = after.split_at(name_len as usize);
            let (value_len, after) = after.split_first_chunk::<4>().unwrap();
            let (value, after) = after.split_at(u32::from_be_bytes(*value_len) as usize);
            properties.push((name.to_vec(), value.to_vec()));
            rest = after;
        }
        (header_len, properties, bytes[header_len + size..].to_vec())
    }

    /// Feeds `stream` in chunks of `chunk` bytes and returns the joined output.
    fn rewrite_in_chunks(stream: &[u8], chunk: usize) -> Vec<u8> {
        let mut rewriter = rewriter();
        let mut output = Vec::new();
        for part in stream.chunks(chunk) {
            output.extend_from_slice(&rewriter.rewrite(part).expect("a valid stream"));
        }
        assert!(rewriter.is_done(), "chunk {chunk}");
        output
    }

    fn property(name: &str, value: &[u8]) -> (Vec<u8>, Vec<u8>) {
        (name.as_bytes().to_vec(), value.to_vec())
    }

    #[test]
    fn ready_identity_replaced() {
        let body = ready_body(&[(b"Socket-Type", b"DEALER"), (b"Identity", b"chosen-by-client")]);
        let stream = [greeting(1), command_frame(&body, false), MESSAGE.to_vec()].concat();

        let output = rewrite_in_chunks(&stream, stream.len());
        assert_eq!(output[..GREETING_LEN], stream[..GREETING_LEN], "greeting changed");
        let (header_len, properties, rest) = parse_command(&output[GREETING_LEN..]);
        assert_eq!(header_len, 2);
        assert_eq!(properties, vec![property("Socket-Type", b"DEALER"), property("Identity", PEER.as_bytes())]);
        assert_eq!(rest, MESSAGE);
    }

    #[test]
    fn ready_without_identity_gets_one() {
        // libzmq sends an empty Identity property, zeromq 0.7 none unless one is set.
        for properties in [&[(&b"Socket-Type"[..], &b"REQ"[..])][..], &[(b"Socket-Type", b"REQ"), (b"Identity", b"")]] {
            let stream = [greeting(0), command_frame(&ready_body(properties), false)].concat();
            let output = rewrite_in_chunks(&stream, stream.len());
            let (_, properties, rest) = parse_command(&output[GREETING_LEN..]);
            assert_eq!(properties, vec![property("Socket-Type", b"REQ"), property("Identity", PEER.as_bytes())]);
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn every_identity_spelling_removed() {
        let body = ready_body(&[
            (b"identity", b"a"),
            (b"Socket-Type", b"DEALER"),
            (b"IDENTITY", b"b"),
            (b"Identity", b"c"),
            (b"X-Trace", b"yes"),
        ]);
        let stream = [greeting(1), command_frame(&body, false)].concat();
        let output = rewrite_in_chunks(&stream, stream.len());
        let (_, properties, _) = parse_command(&output[GREETING_LEN..]);
        let expected = vec![property("Socket-Type", b"DEALER"), property("X-Trace", b"yes"), property("Identity", PEER.as_bytes())];
        assert_eq!(properties, expected);
    }

    #[test]
    fn output_independent_of_splits() {
        let body = ready_body(&[(b"Socket-Type", b"DEALER"), (b"Identity", &[7u8; 255])]);
        let stream = [greeting(1), command_frame(&body, true), MESSAGE.to_vec(), MESSAGE.to_vec()].concat();
        let whole = rewrite_in_chunks(&stream, stream.len());
        for chunk in [1, 2, 3, 7, 63, 64, 65, 66, 100, 300] {
            assert_eq!(rewrite_in_chunks(&stream, chunk), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn ready_held_until_complete() {
        let body = ready_body(&[(b"Socket-Type", b"DEALER")]);
        let frame = command_frame(&body, false);
        let mut rewriter = rewriter();

        let greeting = greeting(1);
        assert_eq!(rewriter.rewrite(&greeting).unwrap().as_ref(), &greeting[..], "greeting held back");
        assert!(rewriter.rewrite(&frame[..frame.len() - 1]).unwrap().is_empty(), "partial READY relayed");
        assert!(!rewriter.is_done());

        let last = [&frame[frame.len() - 1..], MESSAGE].concat();
        let output = rewriter.rewrite(&last).unwrap().into_owned();
        let (_, properties, rest) = parse_command(&output);
        assert_eq!(properties.last(), Some(&property("Identity", PEER.as_bytes())));
        assert_eq!(rest, MESSAGE);

        assert!(rewriter.is_done());
        assert!(matches!(rewriter.rewrite(MESSAGE).unwrap(), Cow::Borrowed(MESSAGE)), "bytes after READY copied");
    }

    #[test]
    fn long_frame_header_matches_size() {
        // A long READY whose rewritten body fits one size byte gets a short header.
        let identity_255 = ready_body(&[(b"Socket-Type", b"DEALER"), (b"Identity", &[7u8; 255])]);
        // A short READY whose rewritten body exceeds 255 bytes gets a long header.
        let near_255 = ready_body(&[(b"Socket-Type", b"DEALER"), (b"X-Pad", &[b'p'; 200])]);
        // A long READY that stays long.
        let metadata = ready_body(&[(b"Socket-Type", b"DEALER"), (b"X-Metadata", &[b'm'; 3000])]);
        let cases = [(identity_255, true, 2), (near_255, false, 9), (metadata, true, 9)];

        for (body, long, expected_header) in cases {
            assert!(long || body.len() <= 255, "a short header cannot hold {} bytes", body.len());
            let stream = [greeting(1), command_frame(&body, long), MESSAGE.to_vec()].concat();
            let output = rewrite_in_chunks(&stream, 5);
            let frame = &output[GREETING_LEN..];
            let (header_len, properties, rest) = parse_command(frame);
            assert_eq!(header_len, expected_header, "body of {} bytes", body.len());
            assert_eq!(properties.last(), Some(&property("Identity", PEER.as_bytes())));
            assert_eq!(rest, MESSAGE, "body of {} bytes", body.len());
            let flags = if expected_header == 9 { FLAG_COMMAND | FLAG_LONG } else { FLAG_COMMAND };
            assert_eq!(frame[0], flags);
        }
    }

    #[test]
    fn malformed_property_list_rejected() {
        let valid = ready_body(&[(b"Socket-Type", b"DEALER")]);
        let cases: [(Vec<u8>, &str); 3] = [
            ([&valid[..], b"\x09Identi"].concat(), "a property name exceeds the command"),
            ([&valid[..], b"\x08Identity\x00\x00"].concat(), "a property value size is missing"),
            ([&valid[..], b"\x08Identity\x00\x00\x00\x09short"].concat(), "a property value exceeds the command"),
        ];
        for (body, reason) in cases {
            let stream = [greeting(1), command_frame(&body, false)].concat();
            let result = rewriter().rewrite(&stream).map(Cow::into_owned);
            assert_eq!(result, Err(Violation::InvalidReady { reason }), "{reason}");
        }
    }

    #[test]
    fn oversized_command_rejected_before_buffering() {
        let mut stream = greeting(1);
        stream.push(FLAG_COMMAND | FLAG_LONG);
        stream.extend_from_slice(&(1u64 << 45).to_be_bytes());
        let result = rewriter().rewrite(&stream).map(Cow::into_owned);
        assert_eq!(result, Err(Violation::CommandTooLarge { size: 1 << 45, max: MAX_COMMAND_BYTES }));
    }

    #[test]
    fn ipv6_address_as_identity() {
        let mut rewriter = ReadyRewriter::for_peer("[2001:db8::1]:40112".parse().unwrap());
        let stream = [greeting(1), command_frame(&ready_body(&[(b"Socket-Type", b"DEALER")]), false)].concat();
        let output = rewriter.rewrite(&stream).unwrap().into_owned();
        let (_, properties, _) = parse_command(&output[GREETING_LEN..]);
        assert_eq!(properties.last(), Some(&property("Identity", b"[2001:db8::1]:40112")));
    }
}
