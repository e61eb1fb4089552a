//! ZMTP 3.x pieces that a native server needs: its greeting and READY command, frame
//! encoding, and cutting frames out of bytes that a [`ZmtpChecker`] has accepted.
//!
//! Only the NULL mechanism exists here, as in the checker.
//!
//! [`ZmtpChecker`]: crate::ZmtpChecker

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::checker::{FLAG_COMMAND, FLAG_LONG, GREETING_LEN};

pub(crate) const FLAG_MORE: u8 = 0b0000_0001;

/// The largest body that a short frame header (one size byte) can declare.
const MAX_SHORT_BODY: usize = 255;

/// The socket types that a native server speaks as.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SocketType {
    Pub,
}

impl SocketType {
    fn name(self) -> &'static [u8] {
        match self {
            SocketType::Pub => b"PUB",
        }
    }
}

/// Our greeting, ZMTP 3.1 with the NULL mechanism, and then our READY command. A server
/// may send both at once: the client reads them in order whatever it sent itself.
pub(crate) fn handshake(socket_type: SocketType) -> Bytes {
    let mut bytes = BytesMut::with_capacity(GREETING_LEN + 32);
    // Signature: 0xFF, 8 bytes of padding, 0x7F; then version 3.1.
    bytes.put_u8(0xFF);
    bytes.put_bytes(0, 8);
    bytes.put_u8(0x7F);
    bytes.put_slice(&[3, 1]);
    let mut mechanism = [0u8; 20];
    mechanism[..4].copy_from_slice(b"NULL");
    bytes.put_slice(&mechanism);
    // as-server is 0 for NULL, then the filler.
    bytes.put_bytes(0, 1 + 31);
    debug_assert_eq!(bytes.len(), GREETING_LEN);

    let name = b"Socket-Type";
    let value = socket_type.name();
    let mut body = BytesMut::new();
    body.put_u8(5);
    body.put_slice(b"READY");
    body.put_u8(name.len() as u8);
    body.put_slice(name);
    body.put_u32(value.len() as u32);
    body.put_slice(value);
    put_frame(&mut bytes, FLAG_COMMAND, &body);
    bytes.freeze()
}

/// The PONG command that answers a PING command body: PING's context, after its 2-byte
/// time to live, comes back unchanged.
pub(crate) fn pong(ping_body: &[u8]) -> Bytes {
    let context = ping_body.get(1 + 4 + 2..).unwrap_or_default();
    let mut body = BytesMut::with_capacity(5 + context.len());
    body.put_u8(4);
    body.put_slice(b"PONG");
    body.put_slice(context);
    let mut bytes = BytesMut::with_capacity(body.len() + 9);
    put_frame(&mut bytes, FLAG_COMMAND, &body);
    bytes.freeze()
}

/// Encodes the frames of one message, each but the last with MORE set.
pub(crate) fn encode_message(frames: &[Bytes]) -> Bytes {
    let size: usize = frames.iter().map(|frame| frame.len() + 9).sum();
    let mut bytes = BytesMut::with_capacity(size);
    for (index, frame) in frames.iter().enumerate() {
        let more = if index + 1 < frames.len() { FLAG_MORE } else { 0 };
        put_frame(&mut bytes, more, frame);
    }
    bytes.freeze()
}

fn put_frame(bytes: &mut BytesMut, flags: u8, body: &[u8]) {
    if body.len() <= MAX_SHORT_BODY {
        bytes.put_u8(flags);
        bytes.put_u8(body.len() as u8);
    } else {
        bytes.put_u8(flags | FLAG_LONG);
        bytes.put_u64(body.len() as u64);
    }
    bytes.put_slice(body);
}

/// Returns the name of a command from its body: a 1-byte length, then the name.
pub(crate) fn command_name(body: &[u8]) -> Option<&[u8]> {
    let length = usize::from(*body.first()?);
    body.get(1..1 + length)
}

/// Returns the value of the Socket-Type property of a READY command body, when it has one.
/// Property names are compared ignoring case, as RFC 37 asks.
pub(crate) fn ready_socket_type(body: &[u8]) -> Option<String> {
    let mut properties = body.get(1 + usize::from(*body.first()?)..)?;
    while !properties.is_empty() {
        let name_length = usize::from(properties[0]);
        let name = properties.get(1..1 + name_length)?;
        let mut rest = properties.get(1 + name_length..)?;
        if rest.len() < 4 {
            return None;
        }
        let value_length = rest.get_u32() as usize;
        let value = rest.get(..value_length)?;
        if name.eq_ignore_ascii_case(b"Socket-Type") {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        properties = rest.get(value_length..)?;
    }
    None
}

/// One received frame.
#[derive(Debug)]
pub(crate) struct Frame {
    pub flags: u8,
    pub body: Bytes,
}

impl Frame {
    pub(crate) fn is_command(&self) -> bool {
        self.flags & FLAG_COMMAND != 0
    }
}

/// Cuts the frames out of a client's byte stream, after skipping its greeting.
///
/// It trusts the sizes, because a [`ZmtpChecker`](crate::ZmtpChecker) has accepted the
/// bytes first, and it reserves nothing from a header: the buffer grows only with bytes
/// that arrived.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buffer: BytesMut,
    greeting_left: usize,
}

impl FrameReader {
    pub(crate) fn new() -> Self {
        FrameReader { buffer: BytesMut::new(), greeting_left: GREETING_LEN }
    }

    /// Adds received bytes.
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Returns the next complete frame, or `None` until more bytes arrive.
    pub(crate) fn next_frame(&mut self) -> Option<Frame> {
        if self.greeting_left > 0 {
            let skipped = self.greeting_left.min(self.buffer.len());
            self.buffer.advance(skipped);
            self.greeting_left -= skipped;
            if self.greeting_left > 0 {
                return None;
            }
        }
        let flags = *self.buffer.first()?;
        let (header, size) = if flags & FLAG_LONG != 0 {
            let size = self.buffer.get(1..9)?;
            (9, u64::from_be_bytes(size.try_into().expect("8 bytes")) as usize)
        } else {
            (2, usize::from(*self.buffer.get(1)?))
        };
        if self.buffer.len() < header + size {
            return None;
        }
        let mut frame = self.buffer.split_to(header + size);
        frame.advance(header);
        Some(Frame { flags, body: frame.freeze() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting() -> Vec<u8> {
        handshake(SocketType::Pub)[..GREETING_LEN].to_vec()
    }

    #[test]
    fn frames_split_across_reads() {
        let mut stream = greeting();
        stream.extend_from_slice(&encode_message(&[Bytes::from_static(b"topic"), Bytes::from(vec![7u8; 300])]));
        let mut reader = FrameReader::new();
        let mut frames = Vec::new();
        for byte in stream {
            reader.extend(&[byte]);
            while let Some(frame) = reader.next_frame() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].flags, FLAG_MORE);
        assert_eq!(&frames[0].body[..], b"topic");
        assert_eq!(frames[1].flags, FLAG_LONG, "a body over 255 bytes has a long header");
        assert_eq!(frames[1].body.len(), 300);
    }

    #[test]
    fn handshake_ready_names_socket_type() {
        let bytes = handshake(SocketType::Pub);
        let mut reader = FrameReader::new();
        reader.extend(&bytes);
        let ready = reader.next_frame().expect("the READY command");
        assert!(ready.is_command());
        assert_eq!(command_name(&ready.body), Some(&b"READY"[..]));
        assert_eq!(ready_socket_type(&ready.body).as_deref(), Some("PUB"));
        assert!(reader.next_frame().is_none());
    }

    #[test]
    fn ready_properties_in_any_case_and_order() {
        let mut body = b"\x05READY".to_vec();
        for (name, value) in [(&b"Identity"[..], &b"abc"[..]), (b"socket-type", b"SUB")] {
            body.push(name.len() as u8);
            body.extend_from_slice(name);
            body.extend_from_slice(&(value.len() as u32).to_be_bytes());
            body.extend_from_slice(value);
        }
        assert_eq!(ready_socket_type(&body).as_deref(), Some("SUB"));
        assert_eq!(ready_socket_type(&body[..body.len() - 1]), None, "a cut value");
        assert_eq!(ready_socket_type(b"\x05READY"), None, "no properties");
    }

    #[test]
    fn pong_returns_ping_context() {
        let ping = b"\x04PING\x00\x0actx";
        let mut reader = FrameReader::new();
        reader.extend(&greeting());
        reader.extend(&pong(ping));
        let frame = reader.next_frame().unwrap();
        assert!(frame.is_command());
        assert_eq!(&frame.body[..], b"\x04PONGctx");
    }
}
