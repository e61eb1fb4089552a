//! ZMTP 3.x framing for a server that speaks ZMTP itself instead of relaying to zeromq.
//!
//! The wire format is that of ZMTP 3.0 and 3.1 (RFC 23 and RFC 37 at rfc.zeromq.org) with
//! the NULL mechanism. Each side sends a 64-byte greeting, then a READY command, then
//! messages and commands:
//!
//! ```text
//! frame    = flags size body         ; flags: bit 0 MORE, bit 1 LONG, bit 2 COMMAND
//! size     = OCTET / 8OCTET          ; 8 big-endian octets when LONG is set
//! command  = name-size name data     ; the body of a frame with COMMAND set
//! ready    = %d5 "READY" *property   ; property = name-size name 4OCTET-value-size value
//! ```
//!
//! [`FrameReader`] reads a client's bytes into one buffer, checks them with a
//! [`ZmtpChecker`] as they arrive, and cuts complete frames out of the checked bytes as
//! [`Bytes`] slices of that buffer, so a frame is never copied. The `write_*` functions
//! append our side of the stream to a write buffer, so that many frames go out in one write.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::checker::{Phase, Violation, ZmtpChecker, FLAG_COMMAND, FLAG_LONG, FLAG_MORE, GREETING_LEN};
use crate::limits::Limits;

/// The minimum free room in the read buffer before each read, in bytes.
pub const READ_CHUNK: usize = 16 * 1024;

/// The ZMTP minor version that [`write_greeting`] announces. 3.1 adds PING, PONG,
/// SUBSCRIBE and CANCEL to 3.0, and a 3.0 peer talks 3.0 with us.
pub const MINOR_VERSION: u8 = 1;

/// The length of the longest frame header: the flags byte and an 8-byte size.
const LONG_HEADER_LEN: usize = 9;

/// The name of the READY property that carries the socket type.
pub const SOCKET_TYPE_PROPERTY: &str = "Socket-Type";

/// One unit that [`FrameReader::next_event`] cuts out of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer's greeting, already checked: signature, major version 3 and the NULL
    /// mechanism.
    Greeting {
        /// The minor version the peer announced: 0 for ZMTP 3.0, 1 for 3.1.
        minor_version: u8,
    },
    /// A command frame, such as READY, PING or SUBSCRIBE.
    Command(Command),
    /// Every frame of one message, in order.
    Message(Vec<Bytes>),
}

/// A command frame split into its name and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command name, such as `READY` or `PING`.
    pub name: Bytes,
    /// The bytes after the name.
    pub data: Bytes,
}

/// An error of the bytes that the checker cannot see, found while cutting frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A command frame whose name-size byte points past the end of the frame.
    #[error("invalid command frame: the name is {name_len} bytes, but the frame has {frame_len}")]
    InvalidCommandName { name_len: usize, frame_len: usize },
    /// A READY command whose property list is cut short or malformed.
    #[error("invalid READY command: {reason}")]
    InvalidReady { reason: &'static str },
}

/// The reason a read from the peer failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The read itself failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The new bytes broke a format rule or a limit.
    #[error("{0}")]
    Violation(#[from] Violation),
}

/// Reads and checks a peer's ZMTP stream and cuts it into greetings, commands and messages.
///
/// The buffer keeps only bytes that the checker accepted. It contains at most one unfinished
/// frame plus one read, and the frames of one unfinished message are kept as slices, so
/// the memory per connection is bounded by the [`Limits`] on frames and messages plus
/// [`READ_CHUNK`].
#[derive(Debug)]
pub struct FrameReader {
    checker: ZmtpChecker,
    /// Checked bytes that are not cut into frames yet.
    buffer: BytesMut,
    greeting_done: bool,
    /// The frames of the unfinished message.
    partial: Vec<Bytes>,
}

impl FrameReader {
    /// Creates a reader that expects the peer's greeting first and enforces `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self { checker: ZmtpChecker::new(limits), buffer: BytesMut::new(), greeting_done: false, partial: Vec::new() }
    }

    /// Returns where the checked stream is, which decides the read timeout.
    pub fn phase(&self) -> Phase {
        self.checker.phase()
    }

    /// Reads once from `source`, checks the new bytes and keeps them. Returns the number of
    /// bytes read, 0 at the end of the stream.
    ///
    /// Cancel-safe when `source`'s `read_buf` is, as tokio's TCP streams are: a read that is
    /// cancelled has taken no bytes.
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, source: &mut R) -> Result<usize, ReadError> {
        self.buffer.reserve(READ_CHUNK);
        let start = self.buffer.len();
        let read = source.read_buf(&mut self.buffer).await?;
        self.check_new_bytes(start)?;
        Ok(read)
    }

    /// Appends `bytes` as if they had been read, for tests and for callers that read
    /// elsewhere.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        let start = self.buffer.len();
        self.buffer.extend_from_slice(bytes);
        self.check_new_bytes(start)
    }

    fn check_new_bytes(&mut self, start: usize) -> Result<(), Violation> {
        if let Err(violation) = self.checker.feed(&self.buffer[start..]) {
            self.buffer.truncate(start);
            return Err(violation);
        }
        Ok(())
    }

    /// Cuts the next complete greeting, command or message out of the bytes read so far.
    /// Returns `Ok(None)` when more bytes are needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, FrameError> {
        if !self.greeting_done {
            if self.buffer.len() < GREETING_LEN {
                return Ok(None);
            }
            let greeting = self.buffer.split_to(GREETING_LEN);
            self.greeting_done = true;
            return Ok(Some(Event::Greeting { minor_version: greeting[11] }));
        }
        loop {
            let Some((flags, body)) = self.next_frame() else { return Ok(None) };
            if flags & FLAG_COMMAND != 0 {
                return split_command(body).map(|command| Some(Event::Command(command)));
            }
            self.partial.push(body);
            if flags & FLAG_MORE == 0 {
                return Ok(Some(Event::Message(std::mem::take(&mut self.partial))));
            }
        }
    }

    /// Cuts one complete frame out of the buffer and returns its flags and body.
    fn next_frame(&mut self) -> Option<(u8, Bytes)> {
        let flags = *self.buffer.first()?;
        let (header_len, size) = if flags & FLAG_LONG != 0 {
            let size_bytes: [u8; 8] = self.buffer.get(1..LONG_HEADER_LEN)?.try_into().expect("the slice has 8 bytes");
            // The checker has limited the size to `Limits::max_frame_bytes`, far below
            // `usize::MAX`.
            (LONG_HEADER_LEN, u64::from_be_bytes(size_bytes) as usize)
        } else {
            (2, usize::from(*self.buffer.get(1)?))
        };
        if self.buffer.len() < header_len + size {
            return None;
        }
        self.buffer.advance(header_len);
        Some((flags, self.buffer.split_to(size).freeze()))
    }
}

fn split_command(mut body: Bytes) -> Result<Command, FrameError> {
    let frame_len = body.len();
    let name_len = body.first().map_or(0, |&len| usize::from(len));
    if frame_len == 0 || name_len + 1 > frame_len {
        return Err(FrameError::InvalidCommandName { name_len, frame_len });
    }
    body.advance(1);
    let name = body.split_to(name_len);
    Ok(Command { name, data: body })
}

/// Returns the value of the property `name` in the data of a READY command. Names match
/// without regard to ASCII case.
pub fn ready_property<'a>(data: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, FrameError> {
    let invalid = |reason| FrameError::InvalidReady { reason };
    let mut rest = data;
    let mut found = None;
    while let Some((&name_len, after)) = rest.split_first() {
        let name_len = usize::from(name_len);
        if after.len() < name_len + 4 {
            return Err(invalid("a property name or value size is cut short"));
        }
        let (property, after) = after.split_at(name_len);
        let (size, after) = after.split_at(4);
        let value_len = u32::from_be_bytes(size.try_into().expect("the slice has 4 bytes")) as usize;
        if after.len() < value_len {
            return Err(invalid("a property value is cut short"));
        }
        let (value, after) = after.split_at(value_len);
        if found.is_none() && property.eq_ignore_ascii_case(name.as_bytes()) {
            found = Some(value);
        }
        rest = after;
    }
    Ok(found)
}

/// Appends our greeting: ZMTP 3.1, the NULL mechanism and an as-server byte of 0, which
/// the NULL mechanism does not use.
pub fn write_greeting(out: &mut BytesMut) {
    let mut greeting = [0u8; GREETING_LEN];
    greeting[0] = 0xFF;
    greeting[9] = 0x7F;
    greeting[10] = 3;
    greeting[11] = MINOR_VERSION;
    greeting[12..16].copy_from_slice(b"NULL");
    out.extend_from_slice(&greeting);
}

/// Appends a READY command that announces `socket_type`, such as `ROUTER`.
pub fn write_ready(out: &mut BytesMut, socket_type: &str) {
    let mut data = Vec::with_capacity(1 + SOCKET_TYPE_PROPERTY.len() + 4 + socket_type.len());
    data.push(SOCKET_TYPE_PROPERTY.len() as u8);
    data.extend_from_slice(SOCKET_TYPE_PROPERTY.as_bytes());
    data.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    data.extend_from_slice(socket_type.as_bytes());
    write_command(out, "READY", &data);
}

/// Appends the PONG for a PING command whose data is `ping_data`: a 2-byte TTL, then a
/// context of up to 16 bytes that the PONG repeats. A pyzmq DEALER on libzmq 4.3.5 with a
/// 100 ms heartbeat and a 400 ms timeout stayed connected to the data server with these.
pub fn write_pong(out: &mut BytesMut, ping_data: &[u8]) {
    let context = ping_data.get(2..).unwrap_or_default();
    write_command(out, "PONG", &context[..context.len().min(16)]);
}

/// Appends a command frame.
///
/// # Panics
/// If `name` is longer than 255 bytes.
pub fn write_command(out: &mut BytesMut, name: &str, data: &[u8]) {
    let name_len = u8::try_from(name.len()).expect("a command name has at most 255 bytes");
    write_header(out, FLAG_COMMAND, 1 + name.len() + data.len());
    out.put_u8(name_len);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(data);
}

/// Appends one message frame; `more` is true for every frame of a message but the last.
pub fn write_frame(out: &mut BytesMut, body: &[u8], more: bool) {
    write_header(out, if more { FLAG_MORE } else { 0 }, body.len());
    out.extend_from_slice(body);
}

/// Appends one message frame whose body `fill` appends, so the body is encoded in place
/// instead of in a buffer of its own. The header is short when the body has at most 255
/// bytes, which moves those bytes once.
pub fn write_frame_with(out: &mut BytesMut, more: bool, fill: impl FnOnce(&mut BytesMut)) {
    let flags = if more { FLAG_MORE } else { 0 };
    let header_at = out.len();
    out.put_bytes(0, LONG_HEADER_LEN);
    fill(out);
    let body_at = header_at + LONG_HEADER_LEN;
    let size = out.len() - body_at;
    if size <= usize::from(u8::MAX) {
        out[header_at] = flags;
        out[header_at + 1] = size as u8;
        out.copy_within(body_at.., header_at + 2);
        out.truncate(header_at + 2 + size);
    } else {
        out[header_at] = flags | FLAG_LONG;
        out[header_at + 1..body_at].copy_from_slice(&(size as u64).to_be_bytes());
    }
}

fn write_header(out: &mut BytesMut, flags: u8, size: usize) {
    match u8::try_from(size) {
        Ok(short) => {
            out.put_u8(flags);
            out.put_u8(short);
        }
        Err(_) => {
            out.put_u8(flags | FLAG_LONG);
            out.put_u64(size as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_greeting(minor: u8) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_greeting(&mut out);
        out[11] = minor;
        out.to_vec()
    }

    fn client_handshake(socket_type: &str) -> Vec<u8> {
        let mut out = BytesMut::from(&client_greeting(0)[..]);
        write_ready(&mut out, socket_type);
        out.to_vec()
    }

    fn events(reader: &mut FrameReader) -> Vec<Event> {
        let mut found = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            found.push(event);
        }
        found
    }

    fn message(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for (index, frame) in frames.iter().enumerate() {
            write_frame(&mut out, frame, index + 1 < frames.len());
        }
        out.to_vec()
    }

    fn ready_event(socket_type: &str) -> Event {
        let mut data = BytesMut::new();
        write_ready(&mut data, socket_type);
        // Skip the 2-byte header and the name.
        Event::Command(Command { name: Bytes::from_static(b"READY"), data: data.freeze().slice(2 + 6..) })
    }

    #[test]
    fn handshake_and_message_in_one_read() {
        let mut reader = FrameReader::new(&Limits::default());
        let mut bytes = client_handshake("DEALER");
        bytes.extend(message(&[b"", b"payload"]));
        reader.push(&bytes).unwrap();
        let found = events(&mut reader);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0], Event::Greeting { minor_version: 0 });
        assert_eq!(found[1], ready_event("DEALER"));
        assert_eq!(found[2], Event::Message(vec![Bytes::new(), Bytes::from_static(b"payload")]));
    }

    #[test]
    fn frames_split_across_reads() {
        let mut bytes = client_handshake("REQ");
        bytes.extend(message(&[b"", b"first"]));
        bytes.extend(message(&[b"second"]));
        for split in [1, 2, 7, 63, 64, 65, 66, 70] {
            let mut reader = FrameReader::new(&Limits::default());
            let mut found = Vec::new();
            for chunk in bytes.chunks(split) {
                reader.push(chunk).unwrap();
                found.extend(events(&mut reader));
            }
            assert_eq!(found.len(), 4, "chunks of {split} bytes");
            assert_eq!(found[2], Event::Message(vec![Bytes::new(), Bytes::from_static(b"first")]), "chunks of {split} bytes");
            assert_eq!(found[3], Event::Message(vec![Bytes::from_static(b"second")]), "chunks of {split} bytes");
        }
    }

    #[test]
    fn long_frame_is_cut_whole() {
        let body = vec![7u8; 70_000];
        let mut bytes = client_handshake("DEALER");
        bytes.extend(message(&[&body]));
        assert_eq!(bytes[bytes.len() - body.len() - 9], FLAG_LONG, "the frame has a long header");
        let mut reader = FrameReader::new(&Limits::default());
        let mut found = Vec::new();
        for chunk in bytes.chunks(4096) {
            reader.push(chunk).unwrap();
            found.extend(events(&mut reader));
        }
        assert_eq!(found.last(), Some(&Event::Message(vec![Bytes::from(body)])));
    }

    #[test]
    fn commands_between_messages() {
        let mut bytes = client_handshake("DEALER");
        bytes.extend(message(&[b"one"]));
        let mut ping = BytesMut::new();
        write_command(&mut ping, "PING", b"\x00\x0actx");
        bytes.extend_from_slice(&ping);
        bytes.extend(message(&[b"two"]));
        let mut reader = FrameReader::new(&Limits::default());
        reader.push(&bytes).unwrap();
        let found = events(&mut reader);
        assert_eq!(found.len(), 5);
        assert_eq!(found[2], Event::Message(vec![Bytes::from_static(b"one")]));
        assert_eq!(
            found[3],
            Event::Command(Command { name: Bytes::from_static(b"PING"), data: Bytes::from_static(b"\x00\x0actx") })
        );
        assert_eq!(found[4], Event::Message(vec![Bytes::from_static(b"two")]));
    }

    #[test]
    fn pong_echoes_ping_context() {
        let mut out = BytesMut::new();
        write_pong(&mut out, b"\x00\x0acontext");
        assert_eq!(&out[..], b"\x04\x0c\x04PONGcontext");
        let mut out = BytesMut::new();
        write_pong(&mut out, b"\x00");
        assert_eq!(&out[..], b"\x04\x05\x04PONG", "a PING without TTL gets an empty context");
    }

    #[test]
    fn oversized_frame_is_rejected_before_buffering() {
        let mut reader = FrameReader::new(&Limits::default());
        let mut bytes = client_handshake("DEALER");
        bytes.push(FLAG_LONG);
        bytes.extend_from_slice(&(1u64 << 45).to_be_bytes());
        assert!(matches!(reader.push(&bytes), Err(Violation::FrameTooLarge { .. })));
    }

    #[test]
    fn command_with_long_name_is_rejected() {
        let mut reader = FrameReader::new(&Limits::default());
        let mut bytes = client_handshake("DEALER");
        bytes.extend_from_slice(&[FLAG_COMMAND, 2, 9, b'X']);
        reader.push(&bytes).unwrap();
        assert!(reader.next_event().unwrap().is_some());
        assert!(reader.next_event().unwrap().is_some());
        assert_eq!(reader.next_event(), Err(FrameError::InvalidCommandName { name_len: 9, frame_len: 2 }));
    }

    #[test]
    fn ready_property_lookup() {
        let Event::Command(ready) = ready_event("REQ") else { unreachable!() };
        assert_eq!(ready_property(&ready.data, "socket-type"), Ok(Some(&b"REQ"[..])));
        assert_eq!(ready_property(&ready.data, "Identity"), Ok(None));
        assert!(ready_property(&ready.data[..ready.data.len() - 1], "Socket-Type").is_err());
        assert!(ready_property(b"\x0bSocket-Type\x00\x00", "Socket-Type").is_err());
    }

    #[test]
    fn frame_with_encodes_short_and_long() {
        let mut out = BytesMut::from(&b"x"[..]);
        write_frame_with(&mut out, true, |out| out.extend_from_slice(b"abc"));
        assert_eq!(&out[..], b"x\x01\x03abc");

        let mut out = BytesMut::new();
        write_frame_with(&mut out, false, |out| out.put_bytes(5, 300));
        let mut expected = BytesMut::new();
        write_frame(&mut expected, &[5u8; 300], false);
        assert_eq!(out, expected);
        assert_eq!(out[0], FLAG_LONG);
    }
}
