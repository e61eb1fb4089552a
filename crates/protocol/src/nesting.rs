//! A scan of MessagePack structure that runs before rmp-serde decodes a message.
//!
//! rmp-serde decodes nested arrays and maps by recursion, so a few hundred bytes of nested
//! array headers overflow a thread's stack in a debug build, before its own depth limit (1024
//! in rmp-serde 1.3) is reached; that limit does not depend on frame sizes, the stack does.
//! This scan walks the bytes with an explicit stack, so it uses no recursion itself, and
//! rejects anything nested deeper than our envelopes ever are.

/// The deepest nesting of arrays and maps that any envelope of this protocol needs, with room
/// to spare. The deepest today is a published change: envelope, change, kind, variant, record.
pub const MAX_NESTING: usize = 16;

/// Checks that `bytes` start with one well-formed MessagePack value whose arrays and maps are
/// nested at most `max_depth` deep, and whose declared lengths fit in the bytes that follow.
pub fn check_nesting(bytes: &[u8], max_depth: usize) -> Result<(), String> {
    // Values still to read at each open level; the bottom level is the one top-level value.
    // The levels fit on the stack up to MAX_NESTING, so the usual check allocates nothing.
    let mut levels_on_stack = [0u64; MAX_NESTING + 1];
    let mut levels_on_heap = Vec::new();
    let pending: &mut [u64] = if max_depth <= MAX_NESTING {
        &mut levels_on_stack[..=max_depth]
    } else {
        levels_on_heap.resize(max_depth + 1, 0);
        &mut levels_on_heap
    };
    pending[0] = 1;
    // The number of open levels, whose counts are `pending[..open]`.
    let mut open = 1usize;
    let mut position = 0usize;
    while open > 0 {
        let remaining = &mut pending[open - 1];
        if *remaining == 0 {
            open -= 1;
            continue;
        }
        *remaining -= 1;
        let marker = *bytes.get(position).ok_or("truncated MessagePack value")?;
        position += 1;
        let (skip, children) = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            0xc1 => return Err("invalid MessagePack marker 0xc1".into()),
            0xc4 | 0xd9 => (read_length(bytes, &mut position, 1)?, 0),
            0xc5 | 0xda => (read_length(bytes, &mut position, 2)?, 0),
            0xc6 | 0xdb => (read_length(bytes, &mut position, 4)?, 0),
            0xc7 => (read_length(bytes, &mut position, 1)? + 1, 0),
            0xc8 => (read_length(bytes, &mut position, 2)? + 1, 0),
            0xc9 => (read_length(bytes, &mut position, 4)? + 1, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, read_length(bytes, &mut position, 2)?),
            0xdd => (0, read_length(bytes, &mut position, 4)?),
            0xde => (0, 2 * read_length(bytes, &mut position, 2)?),
            0xdf => (0, 2 * read_length(bytes, &mut position, 4)?),
        };
        let available = (bytes.len() - position) as u64;
        if skip > available {
            return Err(format!("a MessagePack value declares {skip} bytes but only {available} follow"));
        }
        position += skip as usize;
        if children > 0 {
            // Every value takes at least one byte, so more children than bytes is a lie.
            if children > available {
                return Err(format!("a MessagePack container declares {children} items but only {available} bytes follow"));
            }
            if open > max_depth {
                return Err(format!("MessagePack nesting deeper than {max_depth} levels"));
            }
            pending[open] = children;
            open += 1;
        }
    }
    Ok(())
}

/// Reads a big-endian length of `width` bytes at `position` and moves past it.
fn read_length(bytes: &[u8], position: &mut usize, width: usize) -> Result<u64, String> {
    let field = bytes.get(*position..*position + width).ok_or("truncated MessagePack length")?;
    *position += width;
    Ok(field.iter().fold(0u64, |length, byte| (length << 8) | u64::from(*byte)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_our_envelopes() {
        let request = crate::WireRequest {
            v: crate::PROTOCOL_VERSION,
            id: 1,
            request: crate::Request::Login { name: "ana".into(), password: "x".repeat(300) },
            client: None,
            brief: false,
        };
        assert_eq!(check_nesting(&crate::encode(&request), MAX_NESTING), Ok(()));
    }

    #[test]
    fn rejects_deep_nesting_without_recursion() {
        let mut bytes = b"\x83\xa1v\x01\xa2id\x01\xa7request".to_vec();
        bytes.extend(std::iter::repeat_n(0x91, 100_000));
        bytes.push(0xc0);
        let error = check_nesting(&bytes, MAX_NESTING).unwrap_err();
        assert!(error.contains("nesting deeper than 16"), "{error}");
    }

    #[test]
    fn accepts_nesting_at_the_limit() {
        let mut bytes = vec![0x91; MAX_NESTING];
        bytes.push(0xc0);
        assert_eq!(check_nesting(&bytes, MAX_NESTING), Ok(()));
        let mut deeper = vec![0x91; MAX_NESTING + 1];
        deeper.push(0xc0);
        assert!(check_nesting(&deeper, MAX_NESTING).is_err());
    }

    #[test]
    fn deeper_limit_than_the_default() {
        let depth = MAX_NESTING * 4;
        let mut bytes = vec![0x91; depth];
        bytes.push(0xc0);
        assert_eq!(check_nesting(&bytes, depth), Ok(()));
        let mut deeper = vec![0x91; depth + 1];
        deeper.push(0xc0);
        assert!(check_nesting(&deeper, depth).is_err());
        assert!(check_nesting(&bytes, MAX_NESTING).is_err());
    }

    #[test]
    fn rejects_lengths_beyond_the_bytes() {
        for bytes in [&b"\xdb\xff\xff\xff\xff"[..], b"\xdd\x00\x00\x10\x00\x01", b"\xa5ab", b"\xcf\x00", b"\x92\x01", b""] {
            assert!(check_nesting(bytes, MAX_NESTING).is_err(), "accepted {bytes:?}");
        }
    }
}
