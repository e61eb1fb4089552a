//! Incremental ZMTP 3.x stream checker for the client-to-server direction.
//!
//! The wire format checked here is ZMTP 3.0 and 3.1 (RFC 23 and RFC 37 at
//! rfc.zeromq.org) with the NULL security mechanism:
//!
//! ```text
//! greeting = signature version mechanism as-server filler       ; 64 bytes
//! signature = %xFF 8OCTET %x7F
//! version   = %x03 OCTET                                        ; major 3, any minor
//! mechanism = "NULL" 16%x00
//! as-server = %x00 / %x01
//! filler    = 31OCTET                                           ; not checked
//! frame     = flags size body
//! flags     = bit 0 MORE, bit 1 LONG (8-byte size), bit 2 COMMAND, bits 3-7 zero
//! size      = OCTET / 8OCTET                                    ; big-endian
//! ```
//!
//! After the greeting, the first frame must be the READY command. Then commands
//! and messages may follow in any order, but never a command between the frames
//! of one multipart message.

use crate::limits::{Limits, SubscriptionLimits, MAX_COMMAND_BYTES};

/// Length of the ZMTP 3.x greeting in bytes.
pub const GREETING_LEN: usize = 64;

pub(crate) const FLAG_MORE: u8 = 0b0000_0001;
pub(crate) const FLAG_LONG: u8 = 0b0000_0010;
pub(crate) const FLAG_COMMAND: u8 = 0b0000_0100;
const FLAG_RESERVED: u8 = !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND);

const MECHANISM_OFFSET: usize = 12;
const MECHANISM_LEN: usize = 20;
const AS_SERVER_OFFSET: usize = 32;

/// Start of the READY command body: a one-byte name length, then the name.
pub(crate) const READY_PREFIX: &[u8] = b"\x05READY";

/// Starts of the ZMTP 3.1 subscription command bodies.
const SUBSCRIBE_PREFIX: &[u8] = b"\x09SUBSCRIBE";
const CANCEL_PREFIX: &[u8] = b"\x06CANCEL";

/// The longest command name prefix that the checker records, SUBSCRIBE's.
const COMMAND_PREFIX_LEN: usize = SUBSCRIBE_PREFIX.len();

/// A limit or format rule broken by the client's byte stream.
///
/// The `Display` text names the rule and the offending value, so it can go
/// straight into a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Byte 0 of the greeting is not 0xFF or byte 9 is not 0x7F.
    #[error("invalid greeting signature: byte {offset} is {value:#04x}, expected {expected:#04x}")]
    InvalidSignature {
        offset: usize,
        value: u8,
        expected: u8,
    },

    /// The major version in the greeting is not 3.
    #[error("unsupported ZMTP major version {major}, expected 3")]
    UnsupportedVersion { major: u8 },

    /// The greeting names a security mechanism other than NULL.
    #[error("unsupported security mechanism {mechanism:?}, only \"NULL\" is accepted")]
    UnsupportedMechanism { mechanism: String },

    /// The as-server byte of the greeting is neither 0 nor 1.
    #[error("invalid as-server byte {value:#04x} in the greeting, expected 0x00 or 0x01")]
    InvalidAsServer { value: u8 },

    /// A frame's flags byte has one of the reserved bits 3 to 7 set.
    #[error("invalid frame flags {flags:#04x}: reserved bits 3 to 7 must be zero")]
    ReservedFlags { flags: u8 },

    /// A command frame also has the MORE bit set.
    #[error("invalid frame flags {flags:#04x}: a command frame cannot have the MORE bit")]
    CommandWithMore { flags: u8 },

    /// A command frame arrived between the frames of a multipart message.
    #[error("command frame after frame {frames} of an unfinished multipart message")]
    CommandInsideMessage { frames: u64 },

    /// The first frame after the greeting is not the READY command.
    #[error("expected the READY command after the greeting, got {found}")]
    ExpectedReady { found: &'static str },

    /// A message frame declares more bytes than `Limits::max_frame_bytes`.
    #[error("frame of {size} bytes exceeds max_frame_bytes ({max})")]
    FrameTooLarge { size: u64, max: u64 },

    /// A command frame declares more bytes than [`MAX_COMMAND_BYTES`].
    #[error("command frame of {size} bytes exceeds the command limit ({max} bytes)")]
    CommandTooLarge { size: u64, max: u64 },

    /// The frames of one message add up to more than `Limits::max_message_bytes`.
    #[error("message of at least {size} bytes exceeds max_message_bytes ({max})")]
    MessageTooLarge { size: u64, max: u64 },

    /// One message has more frames than `Limits::max_frames_per_message`.
    #[error("message has more than max_frames_per_message ({max}) frames")]
    TooManyFrames { max: u64 },

    /// The property list of the READY command is malformed, so the guard
    /// cannot put the client's address in its Identity property.
    #[error("invalid READY command: {reason}")]
    InvalidReady { reason: &'static str },

    /// On a PUB port, a subscribe or cancel message or command is larger
    /// than `SubscriptionLimits::max_bytes` allows.
    #[error("subscription of {size} bytes exceeds the subscription limit ({max} bytes)")]
    SubscriptionTooLarge { size: u64, max: u64 },

    /// On a PUB port, the connection sent more subscribe and cancel messages
    /// and commands than `SubscriptionLimits::max_count`.
    #[error("more than {max} subscriptions on one connection")]
    TooManySubscriptions { max: u64 },
}

/// Where the checker is in the stream, which decides the relay's read timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The greeting or the READY command is not complete yet.
    Handshake,
    /// The last complete frame ended a message, and no byte of the next has arrived.
    BetweenMessages,
    /// Part of a frame has arrived, or a frame with MORE set awaits its successor.
    InsideMessage,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// `received` bytes of the greeting have been checked.
    Greeting { received: usize },
    /// The next byte is a frame's flags byte.
    Flags,
    /// The flags byte has arrived and `received` of the `needed` size bytes.
    Size {
        flags: u8,
        value: u64,
        received: u8,
        needed: u8,
    },
    /// `remaining` of the `size` body bytes are still to come.
    Body {
        flags: u8,
        size: u64,
        remaining: u64,
    },
}

/// An incremental ZMTP checker that takes the client's bytes in any split and
/// returns a [`Violation`] at the first byte that breaks a rule or a limit.
///
/// It keeps a fixed-size state (no buffering), so a caller can check each read
/// chunk before relaying it. Once a violation is returned, every later call to
/// [`feed`](Self::feed) returns the same violation.
#[derive(Debug, Clone)]
pub struct ZmtpChecker {
    max_frame_bytes: u64,
    max_message_bytes: u64,
    max_frames_per_message: u64,
    state: State,
    mechanism: [u8; MECHANISM_LEN],
    handshake_done: bool,
    /// Frames of the current message, counting the one being read.
    frames_in_message: u64,
    /// Declared sizes of the current message's frames, counting the one being read.
    message_bytes: u64,
    /// The subscription limits, on a port that fronts a PUB socket.
    subscription_limits: Option<SubscriptionLimits>,
    /// Subscribe and cancel messages and commands counted on this connection.
    subscriptions: u64,
    /// The first body bytes of the command being read after the handshake,
    /// which name it; recorded only with subscription limits.
    command_prefix: [u8; COMMAND_PREFIX_LEN],
    command_prefix_len: usize,
    violation: Option<Violation>,
}

impl ZmtpChecker {
    /// Creates a checker that expects a greeting next and enforces the frame
    /// and message limits of `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            max_frame_bytes: limits.max_frame_bytes,
            max_message_bytes: limits.max_message_bytes,
            max_frames_per_message: limits.max_frames_per_message,
            state: State::Greeting { received: 0 },
            mechanism: [0; MECHANISM_LEN],
            handshake_done: false,
            frames_in_message: 0,
            message_bytes: 0,
            subscription_limits: limits.subscriptions,
            subscriptions: 0,
            command_prefix: [0; COMMAND_PREFIX_LEN],
            command_prefix_len: 0,
            violation: None,
        }
    }

    /// Returns the position in the stream after the bytes fed so far.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Greeting { .. } => Phase::Handshake,
            _ if !self.handshake_done => Phase::Handshake,
            State::Flags if self.frames_in_message == 0 => Phase::BetweenMessages,
            _ => Phase::InsideMessage,
        }
    }

    /// Checks the next bytes of the stream.
    ///
    /// Returns the first violation found in `bytes`. The size fields are
    /// checked as soon as their last byte arrives, before any body byte.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        if let Some(violation) = &self.violation {
            return Err(violation.clone());
        }
        let result = self.feed_unchecked(bytes);
        if let Err(violation) = &result {
            self.violation = Some(violation.clone());
        }
        result
    }

    fn feed_unchecked(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        let mut position = 0;
        while position < bytes.len() {
            match self.state {
                State::Greeting { received } => {
                    self.check_greeting_byte(received, bytes[position])?;
                    position += 1;
                    self.state = if received + 1 == GREETING_LEN {
                        State::Flags
                    } else {
                        State::Greeting {
                            received: received + 1,
                        }
                    };
                }
                State::Flags => {
                    self.start_frame(bytes[position])?;
                    position += 1;
                }
                State::Size {
                    flags,
                    value,
                    received,
                    needed,
                } => {
                    let value = (value << 8) | u64::from(bytes[position]);
                    position += 1;
                    if received + 1 == needed {
                        self.check_frame_size(flags, value)?;
                        self.state = State::Body {
                            flags,
                            size: value,
                            remaining: value,
                        };
                        if value == 0 {
                            self.finish_frame(flags)?;
                        }
                    } else {
                        self.state = State::Size {
                            flags,
                            value,
                            received: received + 1,
                            needed,
                        };
                    }
                }
                State::Body {
                    flags,
                    size,
                    remaining,
                } => {
                    let available = (bytes.len() - position) as u64;
                    let consumed = remaining.min(available);
                    let chunk = &bytes[position..position + consumed as usize];
                    if !self.handshake_done {
                        check_ready_prefix(size - remaining, chunk)?;
                    } else if flags & FLAG_COMMAND != 0 && self.subscription_limits.is_some() {
                        self.record_command_prefix(chunk);
                    }
                    position += consumed as usize;
                    let remaining = remaining - consumed;
                    self.state = State::Body {
                        flags,
                        size,
                        remaining,
                    };
                    if remaining == 0 {
                        self.finish_frame(flags)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn check_greeting_byte(&mut self, offset: usize, value: u8) -> Result<(), Violation> {
        match offset {
            0 if value != 0xFF => Err(Violation::InvalidSignature {
                offset,
                value,
                expected: 0xFF,
            }),
            9 if value != 0x7F => Err(Violation::InvalidSignature {
                offset,
                value,
                expected: 0x7F,
            }),
            10 if value != 3 => Err(Violation::UnsupportedVersion { major: value }),
            MECHANISM_OFFSET..AS_SERVER_OFFSET => {
                self.mechanism[offset - MECHANISM_OFFSET] = value;
                if offset == AS_SERVER_OFFSET - 1 {
                    check_mechanism(&self.mechanism)?;
                }
                Ok(())
            }
            AS_SERVER_OFFSET if value > 1 => Err(Violation::InvalidAsServer { value }),
            _ => Ok(()),
        }
    }

    /// Checks a flags byte and the frame count, then waits for the size.
    fn start_frame(&mut self, flags: u8) -> Result<(), Violation> {
        if flags & FLAG_RESERVED != 0 {
            return Err(Violation::ReservedFlags { flags });
        }
        let is_command = flags & FLAG_COMMAND != 0;
        if is_command {
            if flags & FLAG_MORE != 0 {
                return Err(Violation::CommandWithMore { flags });
            }
            if self.frames_in_message > 0 {
                return Err(Violation::CommandInsideMessage {
                    frames: self.frames_in_message,
                });
            }
        } else {
            if !self.handshake_done {
                return Err(Violation::ExpectedReady {
                    found: "a message frame",
                });
            }
            if self.frames_in_message >= self.max_frames_per_message {
                return Err(Violation::TooManyFrames {
                    max: self.max_frames_per_message,
                });
            }
            self.frames_in_message += 1;
        }
        let needed = if flags & FLAG_LONG != 0 { 8 } else { 1 };
        self.state = State::Size {
            flags,
            value: 0,
            received: 0,
            needed,
        };
        Ok(())
    }

    fn check_frame_size(&mut self, flags: u8, size: u64) -> Result<(), Violation> {
        if flags & FLAG_COMMAND != 0 {
            if size > MAX_COMMAND_BYTES {
                return Err(Violation::CommandTooLarge {
                    size,
                    max: MAX_COMMAND_BYTES,
                });
            }
            if !self.handshake_done && size < READY_PREFIX.len() as u64 {
                return Err(Violation::ExpectedReady {
                    found: "a shorter command",
                });
            }
            if let (true, Some(limits)) = (self.handshake_done, self.subscription_limits) {
                // Any command other than SUBSCRIBE and CANCEL (PING, PONG) is
                // far smaller, so the size is checked before the name arrives.
                let max = limits.max_bytes + SUBSCRIBE_PREFIX.len() as u64;
                if size > max {
                    return Err(Violation::SubscriptionTooLarge { size, max });
                }
                self.command_prefix_len = 0;
            }
            return Ok(());
        }
        if let Some(limits) = self.subscription_limits {
            if size > limits.max_bytes {
                return Err(Violation::SubscriptionTooLarge {
                    size,
                    max: limits.max_bytes,
                });
            }
        }
        if size > self.max_frame_bytes {
            return Err(Violation::FrameTooLarge {
                size,
                max: self.max_frame_bytes,
            });
        }
        self.message_bytes = self.message_bytes.saturating_add(size);
        if self.message_bytes > self.max_message_bytes {
            return Err(Violation::MessageTooLarge {
                size: self.message_bytes,
                max: self.max_message_bytes,
            });
        }
        Ok(())
    }

    fn finish_frame(&mut self, flags: u8) -> Result<(), Violation> {
        self.state = State::Flags;
        let is_command = flags & FLAG_COMMAND != 0;
        if is_command && !self.handshake_done {
            // The only command accepted before the handshake ends is READY,
            // which `check_ready_prefix` has verified by now.
            self.handshake_done = true;
            return Ok(());
        }
        if !is_command && flags & FLAG_MORE == 0 {
            self.frames_in_message = 0;
            self.message_bytes = 0;
        }
        let counts_as_subscription = !is_command || self.command_is_subscription();
        if let (true, Some(limits)) = (counts_as_subscription, self.subscription_limits) {
            self.subscriptions += 1;
            if self.subscriptions > limits.max_count {
                return Err(Violation::TooManySubscriptions {
                    max: limits.max_count,
                });
            }
        }
        Ok(())
    }

    /// Appends the bytes of a command body that fall within its name prefix.
    fn record_command_prefix(&mut self, chunk: &[u8]) {
        let wanted = (COMMAND_PREFIX_LEN - self.command_prefix_len).min(chunk.len());
        self.command_prefix[self.command_prefix_len..self.command_prefix_len + wanted]
            .copy_from_slice(&chunk[..wanted]);
        self.command_prefix_len += wanted;
    }

    /// Returns true when the command just read is SUBSCRIBE or CANCEL.
    fn command_is_subscription(&self) -> bool {
        let prefix = &self.command_prefix[..self.command_prefix_len];
        prefix.starts_with(SUBSCRIBE_PREFIX) || prefix.starts_with(CANCEL_PREFIX)
    }
}

/// Checks the body bytes of the first command that fall on the "\x05READY" prefix.
fn check_ready_prefix(offset: u64, chunk: &[u8]) -> Result<(), Violation> {
    for (index, &byte) in chunk.iter().enumerate() {
        let at = offset as usize + index;
        if at >= READY_PREFIX.len() {
            break;
        }
        if byte != READY_PREFIX[at] {
            return Err(Violation::ExpectedReady {
                found: "another command",
            });
        }
    }
    Ok(())
}

/// Accepts only "NULL" padded with zero bytes. PLAIN and CURVE change the
/// handshake and CURVE encrypts the frames, so the guard could not parse them.
fn check_mechanism(field: &[u8; MECHANISM_LEN]) -> Result<(), Violation> {
    let name_len = field
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(MECHANISM_LEN);
    let padding_is_zero = field[name_len..].iter().all(|&byte| byte == 0);
    if &field[..name_len] == b"NULL" && padding_is_zero {
        return Ok(());
    }
    Err(Violation::UnsupportedMechanism {
        mechanism: printable(field),
    })
}

/// Renders a mechanism field for a log line, trimming trailing zero padding.
fn printable(field: &[u8]) -> String {
    let end = field
        .iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |last| last + 1);
    field[..end].escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MORE: u8 = FLAG_MORE;
    const COMMAND: u8 = FLAG_COMMAND;

    fn greeting() -> Vec<u8> {
        let mut bytes = vec![0u8; GREETING_LEN];
        bytes[0] = 0xFF;
        bytes[9] = 0x7F;
        bytes[10] = 3;
        bytes[11] = 1;
        bytes[12..16].copy_from_slice(b"NULL");
        bytes
    }

    /// Encodes one frame, with an 8-byte size when the body exceeds 255 bytes.
    fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(body.len() + 9);
        if body.len() > 255 {
            bytes.push(flags | FLAG_LONG);
            bytes.extend_from_slice(&(body.len() as u64).to_be_bytes());
        } else {
            bytes.push(flags);
            bytes.push(body.len() as u8);
        }
        bytes.extend_from_slice(body);
        bytes
    }

    fn command(name: &str, properties: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = vec![name.len() as u8];
        body.extend_from_slice(name.as_bytes());
        for (key, value) in properties {
            body.push(key.len() as u8);
            body.extend_from_slice(key.as_bytes());
            body.extend_from_slice(&(value.len() as u32).to_be_bytes());
            body.extend_from_slice(value);
        }
        frame(COMMAND, &body)
    }

    fn ready() -> Vec<u8> {
        command(
            "READY",
            &[("Socket-Type", b"DEALER"), ("Identity", &[7u8; 255])],
        )
    }

    fn message(parts: &[&[u8]]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (index, part) in parts.iter().enumerate() {
            let flags = if index + 1 < parts.len() { MORE } else { 0 };
            bytes.extend(frame(flags, part));
        }
        bytes
    }

    fn handshake() -> Vec<u8> {
        [greeting(), ready()].concat()
    }

    /// Builds a valid client stream: a handshake, then messages and commands of
    /// every shape (empty frames, long frames, multipart, SUBSCRIBE, PING).
    fn valid_stream() -> Vec<u8> {
        [
            handshake(),
            message(&[b"", b"hello"]),
            message(&[&[1u8; 300]]),
            message(&[b""]),
            command("SUBSCRIBE", &[]),
            command("PING", &[]),
            message(&[b"a", b"b", b"c", &[2u8; 70_000]]),
            message(&[b"last"]),
        ]
        .concat()
    }

    /// Small deterministic generator (xorshift64), enough for byte splits.
    struct Xorshift(u64);

    impl Xorshift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    /// Feeds `bytes` in random chunks of 1 to `max_chunk` bytes.
    fn feed_in_random_chunks(
        checker: &mut ZmtpChecker,
        bytes: &[u8],
        rng: &mut Xorshift,
        max_chunk: usize,
    ) -> Result<(), Violation> {
        let mut start = 0;
        while start < bytes.len() {
            let end = (start + 1 + rng.below(max_chunk)).min(bytes.len());
            checker.feed(&bytes[start..end])?;
            start = end;
        }
        Ok(())
    }

    fn checker() -> ZmtpChecker {
        ZmtpChecker::new(&Limits::default())
    }

    fn small_limits() -> Limits {
        Limits {
            max_frame_bytes: 100,
            max_message_bytes: 150,
            max_frames_per_message: 4,
            ..Limits::default()
        }
    }

    /// Feeds `bytes` one byte at a time and returns the index of the byte
    /// that was rejected, with the violation.
    fn first_rejected_byte(checker: &mut ZmtpChecker, bytes: &[u8]) -> Option<(usize, Violation)> {
        for (index, byte) in bytes.iter().enumerate() {
            if let Err(violation) = checker.feed(std::slice::from_ref(byte)) {
                return Some((index, violation));
            }
        }
        None
    }

    #[test]
    fn valid_stream_in_one_chunk() {
        let mut checker = checker();
        assert_eq!(checker.feed(&valid_stream()), Ok(()));
        assert_eq!(checker.phase(), Phase::BetweenMessages);
    }

    #[test]
    fn valid_stream_byte_by_byte() {
        let mut checker = checker();
        assert_eq!(first_rejected_byte(&mut checker, &valid_stream()), None);
        assert_eq!(checker.phase(), Phase::BetweenMessages);
    }

    #[test]
    fn valid_stream_in_random_splits() {
        let stream = valid_stream();
        let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
        for round in 0..300 {
            let max_chunk = [2, 7, 64, 1000, 9000][round % 5];
            let mut checker = checker();
            let result = feed_in_random_chunks(&mut checker, &stream, &mut rng, max_chunk);
            assert_eq!(result, Ok(()), "round {round}, max chunk {max_chunk}");
            assert_eq!(checker.phase(), Phase::BetweenMessages, "round {round}");
        }
    }

    /// Mutated streams give the same verdict in one chunk and in random splits.
    #[test]
    fn verdict_independent_of_splits() {
        let stream = valid_stream();
        let mut rng = Xorshift(0xD1B5_4A32_D192_ED03);
        for round in 0..500 {
            let mut mutated = stream.clone();
            for _ in 0..1 + rng.below(3) {
                let index = rng.below(mutated.len());
                mutated[index] = rng.next() as u8;
            }
            let whole = checker().feed(&mutated);
            let max_chunk = 1 + rng.below(100);
            let split = feed_in_random_chunks(&mut checker(), &mutated, &mut rng, max_chunk);
            assert_eq!(whole, split, "round {round}");
        }
    }

    #[test]
    fn random_bytes_rejected() {
        let mut rng = Xorshift(42);
        for round in 0..200 {
            let bytes: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
            let result = checker().feed(&bytes);
            assert!(
                result.is_err(),
                "round {round}: 4 KiB of random bytes passed"
            );
        }
    }

    /// The 73-byte attack that aborts an unguarded zeromq 0.7 process.
    #[test]
    fn size_attack_rejected_before_body() {
        let declared = 1u64 << 45;
        let mut attack = greeting();
        attack.push(FLAG_LONG);
        attack.extend_from_slice(&declared.to_be_bytes());
        assert_eq!(attack.len(), 73);

        // Without a READY command the flags byte is already rejected.
        let rejected = first_rejected_byte(&mut checker(), &attack);
        assert_eq!(
            rejected,
            Some((
                64,
                Violation::ExpectedReady {
                    found: "a message frame"
                }
            ))
        );

        // After a valid handshake the 8th size byte is the one rejected.
        let mut checker = checker();
        checker.feed(&handshake()).unwrap();
        let rejected = first_rejected_byte(&mut checker, &attack[64..]);
        let expected = Violation::FrameTooLarge {
            size: declared,
            max: 1 << 20,
        };
        assert_eq!(rejected, Some((8, expected)));

        // The same header as a command frame is rejected at the same byte.
        let mut command_attack = attack.clone();
        command_attack[64] = FLAG_LONG | COMMAND;
        let rejected =
            first_rejected_byte(&mut ZmtpChecker::new(&Limits::default()), &command_attack);
        let expected = Violation::CommandTooLarge {
            size: declared,
            max: MAX_COMMAND_BYTES,
        };
        assert_eq!(rejected, Some((72, expected)));
    }

    #[test]
    fn max_size_frame_header_rejected() {
        let mut stream = handshake();
        stream.push(FLAG_LONG);
        stream.extend_from_slice(&u64::MAX.to_be_bytes());
        let result = checker().feed(&stream);
        assert_eq!(
            result,
            Err(Violation::FrameTooLarge {
                size: u64::MAX,
                max: 1 << 20
            })
        );
    }

    #[test]
    fn bad_signature_rejected() {
        let mut first = greeting();
        first[0] = 0x00;
        let result = checker().feed(&first);
        assert_eq!(
            result,
            Err(Violation::InvalidSignature {
                offset: 0,
                value: 0x00,
                expected: 0xFF
            })
        );

        let mut tenth = greeting();
        tenth[9] = 0x7E;
        let result = checker().feed(&tenth);
        assert_eq!(
            result,
            Err(Violation::InvalidSignature {
                offset: 9,
                value: 0x7E,
                expected: 0x7F
            })
        );
    }

    #[test]
    fn padding_and_minor_version_accepted() {
        let mut bytes = greeting();
        bytes[1..9].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        bytes[11] = 0;
        assert_eq!(checker().feed(&bytes), Ok(()));
    }

    #[test]
    fn other_major_version_rejected() {
        for major in [1u8, 2, 4] {
            let mut bytes = greeting();
            bytes[10] = major;
            assert_eq!(
                checker().feed(&bytes),
                Err(Violation::UnsupportedVersion { major })
            );
        }
    }

    #[test]
    fn mechanism_other_than_null_rejected() {
        let cases: [(&[u8], &str); 4] = [
            (b"PLAIN", "PLAIN"),
            (b"CURVE", "CURVE"),
            (b"NULLX", "NULLX"),
            (b"NULL\0X", "NULL\\x00X"),
        ];
        for (field, shown) in cases {
            let mut bytes = greeting();
            bytes[12..32].fill(0);
            bytes[12..12 + field.len()].copy_from_slice(field);
            let expected = Violation::UnsupportedMechanism {
                mechanism: shown.to_string(),
            };
            assert_eq!(checker().feed(&bytes), Err(expected));
        }
    }

    #[test]
    fn invalid_as_server_rejected() {
        let mut bytes = greeting();
        bytes[32] = 2;
        assert_eq!(
            checker().feed(&bytes),
            Err(Violation::InvalidAsServer { value: 2 })
        );
    }

    #[test]
    fn reserved_flag_bits_rejected() {
        for bit in 3..8 {
            let flags = 1u8 << bit;
            let mut stream = handshake();
            stream.extend([flags, 0]);
            let result = checker().feed(&stream);
            assert_eq!(result, Err(Violation::ReservedFlags { flags }), "bit {bit}");
        }
    }

    #[test]
    fn frame_above_max_rejected() {
        let limits = small_limits();
        let mut at_limit = ZmtpChecker::new(&limits);
        let stream = [handshake(), message(&[&[0u8; 100]])].concat();
        assert_eq!(at_limit.feed(&stream), Ok(()));

        let mut above = ZmtpChecker::new(&limits);
        let stream = [handshake(), message(&[&[0u8; 101]])].concat();
        assert_eq!(
            above.feed(&stream),
            Err(Violation::FrameTooLarge {
                size: 101,
                max: 100
            })
        );
    }

    #[test]
    fn message_above_max_rejected() {
        let limits = small_limits();
        let mut at_limit = ZmtpChecker::new(&limits);
        let stream = [handshake(), message(&[&[0u8; 100], &[0u8; 50]])].concat();
        assert_eq!(at_limit.feed(&stream), Ok(()));

        // The count restarts with each message.
        assert_eq!(at_limit.feed(&message(&[&[0u8; 100], &[0u8; 50]])), Ok(()));

        let mut above = ZmtpChecker::new(&limits);
        let stream = [handshake(), message(&[&[0u8; 100], &[0u8; 51]])].concat();
        assert_eq!(
            above.feed(&stream),
            Err(Violation::MessageTooLarge {
                size: 151,
                max: 150
            })
        );
    }

    #[test]
    fn too_many_frames_rejected() {
        let limits = small_limits();
        let mut at_limit = ZmtpChecker::new(&limits);
        let stream = [handshake(), message(&[b"", b"", b"", b""])].concat();
        assert_eq!(at_limit.feed(&stream), Ok(()));
        assert_eq!(at_limit.feed(&message(&[b"", b"", b"", b""])), Ok(()));

        let mut above = ZmtpChecker::new(&limits);
        let stream = [handshake(), message(&[b"", b"", b"", b"", b""])].concat();
        assert_eq!(
            above.feed(&stream),
            Err(Violation::TooManyFrames { max: 4 })
        );
    }

    #[test]
    fn million_tiny_frames_cut_at_limit() {
        let mut checker = checker();
        checker.feed(&handshake()).unwrap();
        let tiny_frame = [MORE, 0];
        let mut accepted = 0u64;
        let result = loop {
            if let Err(violation) = checker.feed(&tiny_frame) {
                break violation;
            }
            accepted += 1;
            assert!(accepted <= 1_000_000, "no violation after a million frames");
        };
        assert_eq!(result, Violation::TooManyFrames { max: 1024 });
        assert_eq!(accepted, 1024);
    }

    #[test]
    fn command_above_max_rejected() {
        let mut checker = checker();
        checker.feed(&handshake()).unwrap();

        let mut body = vec![9u8];
        body.extend_from_slice(b"SUBSCRIBE");
        body.resize(MAX_COMMAND_BYTES as usize, b'x');
        assert_eq!(checker.feed(&frame(COMMAND, &body)), Ok(()));

        body.push(b'x');
        let result = checker.feed(&frame(COMMAND, &body));
        let expected = Violation::CommandTooLarge {
            size: MAX_COMMAND_BYTES + 1,
            max: MAX_COMMAND_BYTES,
        };
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn ready_required_after_greeting() {
        let cases = [
            (command("SUBSCRIBE", &[]), "another command"),
            (command("PING", &[]), "a shorter command"),
            (frame(COMMAND, b"\x05REA"), "a shorter command"),
            (frame(COMMAND, b"\x06READYX"), "another command"),
            (message(&[b"hello"]), "a message frame"),
        ];
        for (first_frame, found) in cases {
            let stream = [greeting(), first_frame].concat();
            let result = checker().feed(&stream);
            assert_eq!(result, Err(Violation::ExpectedReady { found }), "{found}");
        }
    }

    #[test]
    fn command_with_more_rejected() {
        let stream = [handshake(), vec![COMMAND | MORE, 0]].concat();
        assert_eq!(
            checker().feed(&stream),
            Err(Violation::CommandWithMore { flags: 0x05 })
        );
    }

    #[test]
    fn command_inside_message_rejected() {
        let stream = [handshake(), frame(MORE, b"part"), command("PING", &[])].concat();
        assert_eq!(
            checker().feed(&stream),
            Err(Violation::CommandInsideMessage { frames: 1 })
        );
    }

    #[test]
    fn phase_follows_stream() {
        let mut checker = checker();
        assert_eq!(checker.phase(), Phase::Handshake);
        checker.feed(&greeting()).unwrap();
        assert_eq!(checker.phase(), Phase::Handshake);
        let ready = ready();
        checker.feed(&ready[..ready.len() - 1]).unwrap();
        assert_eq!(checker.phase(), Phase::Handshake);
        checker.feed(&ready[ready.len() - 1..]).unwrap();
        assert_eq!(checker.phase(), Phase::BetweenMessages);

        checker.feed(&[MORE]).unwrap();
        assert_eq!(checker.phase(), Phase::InsideMessage, "after a flags byte");
        checker.feed(&[1]).unwrap();
        assert_eq!(checker.phase(), Phase::InsideMessage, "before the body");
        checker.feed(b"x").unwrap();
        assert_eq!(
            checker.phase(),
            Phase::InsideMessage,
            "after a frame with MORE"
        );
        checker.feed(&frame(0, b"end")).unwrap();
        assert_eq!(checker.phase(), Phase::BetweenMessages);
    }

    #[test]
    fn violation_repeats_after_rejection() {
        let mut checker = checker();
        let first = checker.feed(&[0u8]).unwrap_err();
        assert_eq!(checker.feed(&greeting()), Err(first.clone()));
        assert_eq!(checker.feed(&[]), Err(first));
    }

    #[test]
    fn violation_display_names_limit_and_value() {
        let text = Violation::FrameTooLarge {
            size: 1 << 45,
            max: 1 << 20,
        }
        .to_string();
        assert_eq!(
            text,
            "frame of 35184372088832 bytes exceeds max_frame_bytes (1048576)"
        );

        let text = Violation::TooManyFrames { max: 1024 }.to_string();
        assert_eq!(
            text,
            "message has more than max_frames_per_message (1024) frames"
        );

        let text = Violation::InvalidSignature {
            offset: 0,
            value: 0x47,
            expected: 0xFF,
        }
        .to_string();
        assert_eq!(
            text,
            "invalid greeting signature: byte 0 is 0x47, expected 0xff"
        );
    }

    fn pub_checker() -> ZmtpChecker {
        ZmtpChecker::new(&Limits::for_pub_socket())
    }

    /// A ZMTP 3.0 subscription: a one-frame message of 1 and the topic.
    fn subscription(topic_bytes: usize) -> Vec<u8> {
        let mut body = vec![1u8];
        body.resize(1 + topic_bytes, b't');
        message(&[&body])
    }

    #[test]
    fn subscription_above_max_rejected() {
        let max = SubscriptionLimits::default().max_bytes;
        let mut checker = pub_checker();
        checker.feed(&handshake()).unwrap();
        checker.feed(&subscription(max as usize - 1)).unwrap();

        let oversized = subscription(1 << 20);
        let (index, violation) = first_rejected_byte(&mut checker, &oversized).unwrap();
        assert_eq!(index, 8, "rejected after the 9-byte header, before the body");
        assert_eq!(violation, Violation::SubscriptionTooLarge { size: (1 << 20) + 1, max });
    }

    #[test]
    fn subscription_command_above_max_rejected() {
        let max = SubscriptionLimits::default().max_bytes;
        let mut checker = pub_checker();
        checker.feed(&handshake()).unwrap();
        let topic = vec![b't'; max as usize];
        checker.feed(&command("SUBSCRIBE", &[])).unwrap();
        let mut body = SUBSCRIBE_PREFIX.to_vec();
        body.extend_from_slice(&topic);
        checker.feed(&frame(COMMAND, &body)).unwrap();
        body.push(b't');
        let result = checker.feed(&frame(COMMAND, &body));
        assert_eq!(result, Err(Violation::SubscriptionTooLarge { size: body.len() as u64, max: max + 10 }));
    }

    #[test]
    fn subscriptions_counted_per_connection() {
        let max = SubscriptionLimits::default().max_count;
        let mut checker = pub_checker();
        checker.feed(&handshake()).unwrap();
        for index in 0..max {
            // Half ZMTP 3.0 messages, half ZMTP 3.1 commands, with PINGs between that
            // do not count.
            let stream = if index % 2 == 0 { subscription(10) } else { command("CANCEL", &[]) };
            checker.feed(&stream).unwrap();
            checker.feed(&command("PING", &[])).unwrap();
        }
        assert_eq!(
            checker.feed(&subscription(10)),
            Err(Violation::TooManySubscriptions { max })
        );

        let mut checker = pub_checker();
        checker.feed(&handshake()).unwrap();
        for _ in 0..max {
            checker.feed(&command("SUBSCRIBE", &[])).unwrap();
        }
        assert_eq!(
            checker.feed(&command("SUBSCRIBE", &[])),
            Err(Violation::TooManySubscriptions { max })
        );
    }

    #[test]
    fn other_ports_have_no_subscription_limits() {
        let mut checker = checker();
        checker.feed(&handshake()).unwrap();
        for _ in 0..1000 {
            checker.feed(&subscription(1000)).unwrap();
        }
    }
}
