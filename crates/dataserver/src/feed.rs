//! The feed: this server's local apply order, stored as the order of the changes in the store.
//!
//! Every change this server stores, made here or received from a peer, gets the next position
//! (1, 2, 3...) in the same write transaction as the change itself, so positions survive a
//! restart and never repeat. A segment is stored under the position of its first change, and
//! the others follow it. Web servers use positions to notice the changes their SUB socket
//! lost and to let browsers resume an event stream (`Request::FeedSince`).

use anyhow::Context;
use std::path::Path;

use forum_protocol::{FeedEntry, FeedNote};
use redb::{Database, ReadableTable};

use crate::segment::{self, Entries};
use crate::store::{decode_stored, SEGMENTS};

/// The most changes one `FeedSince` reply carries, whatever the request asks for.
pub const MAX_FEED_BATCH: usize = 500;

/// Reads at most `limit` changes after position `after`, redacted, with the newest position.
pub(crate) fn read_after(database: &Database, path: &Path, after: u64, limit: usize) -> anyhow::Result<(Vec<FeedEntry>, u64)> {
    let transaction = database.begin_read().context("failed to start a read transaction")?;
    let segments = transaction.open_table(SEGMENTS).context("failed to open the segments table")?;
    let last = match segments.last().context("failed to read the newest segment")? {
        Some((first, value)) => first.value() + segment::count(value.value(), first.value(), path)? - 1,
        None => 0,
    };
    let start = after.saturating_add(1);
    // The segment that contains position `start` is the last one that begins at or before it.
    let first_segment = segments
        .range(..=start)
        .context("failed to read the segments table")?
        .next_back()
        .transpose()
        .context("failed to read a segment")?
        .map_or(start, |(first, _)| first.value());

    let mut entries = Vec::new();
    'segments: for record in segments.range(first_segment..).context("failed to read the segments table")? {
        let (first, value) = record.context("failed to read a segment")?;
        for entry in Entries::new(value.value(), first.value(), path) {
            if entries.len() >= limit {
                break 'segments;
            }
            let entry = entry?;
            if entry.position < start {
                continue;
            }
            let change = decode_stored(entry.stored, entry.id, path)?;
            entries.push(FeedEntry { position: entry.position, change: change.redacted(), note: FeedNote::default() });
        }
    }
    Ok((entries, last))
}
