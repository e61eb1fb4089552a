//! Segments: the records of the store. A segment contains the changes at consecutive feed positions,
//! usually all the changes of one commit, so a commit inserts one record instead of one per
//! change.
//!
//! A segment is the concatenation of its entries, one per change, in feed order:
//!
//! | bytes | content                                                              |
//! |-------|----------------------------------------------------------------------|
//! | 4     | origin server id, little-endian                                      |
//! | 8     | sequence number, little-endian                                       |
//! | 4     | length `n` of the stored change that follows, little-endian          |
//! | `n`   | the encoded [`forum_protocol::WireChange`], then its CRC-32 (4 bytes) |

use std::path::Path;

use forum_protocol::{ChangeId, ServerId};

use crate::store::RECOVERY;

/// The length of an entry's header: origin, sequence number and length.
const HEADER_LEN: usize = 4 + 8 + 4;

/// The size above which a commit's changes start a new segment. redb stores a value larger
/// than its 4 KiB page in a leaf page of its own, a power of two in size, and never copies
/// such a leaf when a later key is appended. A segment up to this size plus the leaf's header
/// fits a 64 KiB page.
pub(crate) const MAX_SEGMENT_BYTES: usize = 60 * 1024;

/// Appends an entry to a segment: the change `id`, stored as `stored` (the encoded change
/// and its CRC-32).
pub(crate) fn push(segment: &mut Vec<u8>, id: ChangeId, stored: &[u8]) {
    let length = u32::try_from(stored.len()).expect("a change is smaller than 4 GiB");
    segment.extend_from_slice(&id.origin.to_le_bytes());
    segment.extend_from_slice(&id.seq.to_le_bytes());
    segment.extend_from_slice(&length.to_le_bytes());
    segment.extend_from_slice(stored);
}

/// Returns the size of an entry whose stored change is `stored_len` bytes long.
pub(crate) fn entry_len(stored_len: usize) -> usize {
    HEADER_LEN + stored_len
}

/// One change in a segment.
pub(crate) struct Entry<'a> {
    pub id: ChangeId,
    pub position: u64,
    /// The encoded change followed by its CRC-32, as [`crate::store::decode_stored`] reads it.
    pub stored: &'a [u8],
}

/// The entries of the segment stored at feed position `first`, in feed order. An entry whose
/// header or length runs past the end of the segment gives an error that names the feed
/// position and the file, and ends the iteration.
pub(crate) struct Entries<'a> {
    segment: &'a [u8],
    position: u64,
    path: &'a Path,
}

impl<'a> Entries<'a> {
    pub fn new(segment: &'a [u8], first: u64, path: &'a Path) -> Self {
        Entries { segment, position: first, path }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = anyhow::Result<Entry<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.segment.is_empty() {
            return None;
        }
        let position = self.position;
        let Some((header, rest)) = self.segment.split_at_checked(HEADER_LEN) else {
            self.segment = &[];
            return Some(Err(cut_short(position, self.path)));
        };
        let origin = ServerId::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
        let length = u32::from_le_bytes(header[12..].try_into().expect("4 bytes")) as usize;
        let Some((stored, rest)) = rest.split_at_checked(length) else {
            self.segment = &[];
            return Some(Err(cut_short(position, self.path)));
        };
        self.segment = rest;
        self.position += 1;
        Some(Ok(Entry { id: ChangeId::new(origin, seq), position, stored }))
    }
}

fn cut_short(position: u64, path: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "the stored change at feed position {position} in {} is damaged (its record is cut short); {RECOVERY}",
        path.display()
    )
}

/// Counts the entries of a segment, to find the feed position after it.
pub(crate) fn count(segment: &[u8], first: u64, path: &Path) -> anyhow::Result<u64> {
    let mut count = 0;
    for entry in Entries::new(segment, first, path) {
        entry?;
        count += 1;
    }
    Ok(count)
}

/// A run: changes of one origin with consecutive sequence numbers `first_seq..=last_seq`,
/// all stored in one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub origin: ServerId,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Splits the ids of one segment's changes into runs, ordered by (origin, first_seq).
pub(crate) fn runs(ids: impl IntoIterator<Item = ChangeId>) -> Vec<Run> {
    let mut ids: Vec<(ServerId, u64)> = ids.into_iter().map(|id| (id.origin, id.seq)).collect();
    ids.sort_unstable();
    let mut runs: Vec<Run> = Vec::new();
    for (origin, seq) in ids {
        match runs.last_mut() {
            Some(run) if run.origin == origin && (seq == run.last_seq || Some(seq) == run.last_seq.checked_add(1)) => {
                run.last_seq = seq;
            }
            _ => runs.push(Run { origin, first_seq: seq, last_seq: seq }),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_gaps_and_origins() {
        let ids = [(2, 5), (1, 3), (2, 6), (1, 1), (1, 2), (2, 8), (1, 2)].map(|(origin, seq)| ChangeId::new(origin, seq));
        let found: Vec<(ServerId, u64, u64)> = runs(ids).iter().map(|run| (run.origin, run.first_seq, run.last_seq)).collect();
        assert_eq!(found, [(1, 1, 3), (2, 5, 6), (2, 8, 8)]);
    }

    #[test]
    fn entries_report_cut_segment() {
        let mut segment = Vec::new();
        push(&mut segment, ChangeId::new(3, 9), b"payload1");
        push(&mut segment, ChangeId::new(3, 10), b"payload2");
        let path = Path::new("/data/forum.redb");

        let positions: Vec<u64> = Entries::new(&segment, 7, path).map(|entry| entry.unwrap().position).collect();
        assert_eq!(positions, [7, 8]);

        let cut = &segment[..segment.len() - 1];
        let results: Vec<_> = Entries::new(cut, 7, path).collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        let message = format!("{:#}", results[1].as_ref().err().expect("the second entry is cut"));
        assert!(message.contains("feed position 8"), "{message}");
        assert!(message.contains("/data/forum.redb"), "{message}");
    }
}
