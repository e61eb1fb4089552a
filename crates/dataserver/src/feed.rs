//! The feed: this server's local apply order, stored next to the changes.
//!
//! Every change this server stores, made here or received from a peer, gets the next position
//! (1, 2, 3...) in the same write transaction as the change itself, so positions survive a
//! restart and never repeat. Web servers use them to notice the changes their SUB socket lost
//! and to let browsers resume an event stream (`Request::FeedSince`).

use anyhow::Context;
use std::path::Path;

use forum_protocol::{ChangeId, FeedEntry, FeedNote};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use crate::store::{decode_stored, CHANGES};

/// Change ids, (origin, seq), by position in this server's feed.
const FEED: TableDefinition<u64, (u32, u64)> = TableDefinition::new("feed");

/// The most changes one `FeedSince` reply carries, whatever the request asks for.
pub const MAX_FEED_BATCH: usize = 500;

/// Creates the feed table when missing and returns the newest position.
///
/// A store written before the feed existed has changes and no positions. They get positions
/// 1..=n in (origin, seq) order, once, so web servers see one consistent feed from then on.
pub(crate) fn open(database: &Database) -> anyhow::Result<u64> {
    let transaction = database.begin_write().context("failed to start a write transaction")?;
    let last = {
        let mut feed = transaction.open_table(FEED).context("failed to open the feed table")?;
        let changes = transaction.open_table(CHANGES).context("failed to open the changes table")?;
        let stored_feed = feed.len().context("failed to count the feed")?;
        let stored_changes = changes.len().context("failed to count the changes")?;
        if stored_feed == 0 && stored_changes > 0 {
            let mut position = 0;
            for entry in changes.iter().context("failed to read the changes table")? {
                let (key, _) = entry.context("failed to read a change")?;
                position += 1;
                feed.insert(position, key.value()).context("failed to number a stored change")?;
            }
            tracing::info!(changes = position, "numbered the changes of a store that had no feed");
        }
        let last = feed.last().context("failed to read the newest feed position")?;
        last.map_or(0, |(position, _)| position.value())
    };
    transaction.commit().context("failed to commit the feed table")?;
    Ok(last)
}

/// Records `changes` at positions `first`, `first + 1` and so on, inside the caller's transaction.
pub(crate) fn record(
    transaction: &WriteTransaction,
    first: u64,
    ids: impl IntoIterator<Item = ChangeId>,
) -> anyhow::Result<()> {
    let mut feed = transaction.open_table(FEED).context("failed to open the feed table")?;
    for (position, id) in (first..).zip(ids) {
        feed.insert(position, (id.origin, id.seq))
            .with_context(|| format!("failed to record change {id} at feed position {position}"))?;
    }
    Ok(())
}

/// Reads at most `limit` changes after position `after`, redacted, with the newest position.
pub(crate) fn read_after(database: &Database, path: &Path, after: u64, limit: usize) -> anyhow::Result<(Vec<FeedEntry>, u64)> {
    let transaction = database.begin_read().context("failed to start a read transaction")?;
    let feed = transaction.open_table(FEED).context("failed to open the feed table")?;
    let changes = transaction.open_table(CHANGES).context("failed to open the changes table")?;
    let last = feed.last().context("failed to read the newest feed position")?.map_or(0, |(position, _)| position.value());
    let mut entries = Vec::new();
    let start = after.saturating_add(1);
    for entry in feed.range(start..).context("failed to read the feed")?.take(limit) {
        let (position, id) = entry.context("failed to read a feed entry")?;
        let (origin, seq) = id.value();
        let bytes = changes
            .get((origin, seq))
            .context("failed to read a change")?
            .with_context(|| format!("feed position {} names change {origin}-{seq}, which is not stored", position.value()))?;
        let change = decode_stored(bytes.value(), origin, seq, path)?;
        entries.push(FeedEntry { position: position.value(), change: change.redacted(), note: FeedNote::default() });
    }
    Ok((entries, last))
}
