//! Group-wide identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The id of one data server, unique within its group.
pub type ServerId = u32;

/// The group-wide id of a change: the data server where it was first applied (its origin) and
/// that server's sequence number for it, which starts at 1 and grows by one per change.
///
/// Users, subjects and messages take the id of the change that created them, so two servers
/// never hand out the same id. It is written `"{origin}-{seq}"` (for example `"2-17"`) both in
/// MessagePack and in JSON, so web pages can use it in URLs as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChangeId {
    pub origin: ServerId,
    pub seq: u64,
}

impl ChangeId {
    pub fn new(origin: ServerId, seq: u64) -> Self {
        Self { origin, seq }
    }
}

impl fmt::Display for ChangeId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}-{}", self.origin, self.seq)
    }
}

/// The error for a string that is not of the form `"{origin}-{seq}"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id {0:?}: expected two numbers joined by a dash, such as \"2-17\"")]
pub struct InvalidChangeId(pub String);

impl FromStr for ChangeId {
    type Err = InvalidChangeId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidChangeId(text.to_owned());
        let (origin, seq) = text.split_once('-').ok_or_else(invalid)?;
        // Only the canonical form: digits without leading zeros, so one id has one spelling.
        let canonical = |part: &str| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) && (part == "0" || !part.starts_with('0'))
        };
        if !canonical(origin) || !canonical(seq) {
            return Err(invalid());
        }
        Ok(Self {
            origin: origin.parse().map_err(|_| invalid())?,
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }
}

impl ChangeId {
    /// Writes the id's text form into `buffer` and returns it, without allocating.
    fn write_text(self, buffer: &mut [u8; MAX_ID_TEXT]) -> &str {
        let mut length = push_digits(u64::from(self.origin), buffer, 0);
        buffer[length] = b'-';
        length = push_digits(self.seq, buffer, length + 1);
        std::str::from_utf8(&buffer[..length]).expect("digits and a dash are ASCII")
    }
}

/// Writes the decimal digits of `number` into `buffer` from `at`, and returns the end.
fn push_digits(mut number: u64, buffer: &mut [u8], at: usize) -> usize {
    let mut digits = [0u8; 20];
    let mut count = 0;
    loop {
        digits[count] = b'0' + (number % 10) as u8;
        count += 1;
        number /= 10;
        if number == 0 {
            break;
        }
    }
    for (slot, digit) in buffer[at..at + count].iter_mut().zip(digits[..count].iter().rev()) {
        *slot = *digit;
    }
    at + count
}

/// The maximum length of an id's text form: the 10 digits of a `u32`, a dash, the 20 digits of a `u64`.
const MAX_ID_TEXT: usize = 31;

impl Serialize for ChangeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Every message carries several ids, so the text is formatted on the stack.
        let mut buffer = [0u8; MAX_ID_TEXT];
        serializer.serialize_str(self.write_text(&mut buffer))
    }
}

impl<'de> Deserialize<'de> for ChangeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl serde::de::Visitor<'_> for IdVisitor {
            type Value = ChangeId;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an id such as \"2-17\"")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ChangeId, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(IdVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_id_round_trips_through_text() {
        let id = ChangeId::new(2, 17);
        assert_eq!(id.to_string(), "2-17");
        assert_eq!("2-17".parse::<ChangeId>(), Ok(id));
    }

    #[test]
    fn change_id_text_matches_display_at_the_extremes() {
        for id in [ChangeId::new(0, 0), ChangeId::new(1, 9), ChangeId::new(u32::MAX, u64::MAX), ChangeId::new(10, 100)] {
            let mut buffer = [0u8; MAX_ID_TEXT];
            assert_eq!(id.write_text(&mut buffer), id.to_string());
        }
    }

    #[test]
    fn change_id_rejects_malformed_text() {
        for text in ["", "2", "2-", "-17", "a-1", "1-b", "1-2-3", "+1-2", "99999999999-1", "01-2", "1-02"] {
            assert!(text.parse::<ChangeId>().is_err(), "accepted {text:?}");
        }
    }
}
