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

impl Serialize for ChangeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChangeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
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
    fn change_id_rejects_malformed_text() {
        for text in ["", "2", "2-", "-17", "a-1", "1-b", "1-2-3", "+1-2", "99999999999-1", "01-2", "1-02"] {
            assert!(text.parse::<ChangeId>().is_err(), "accepted {text:?}");
        }
    }
}
