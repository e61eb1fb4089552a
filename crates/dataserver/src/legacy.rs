//! Conversion of stores of formats 1 and 2, which kept one record per change, to the current
//! format.
//!
//! Format 1 had a changes table, (origin, seq) → encoded change, and no meta table. Format 2
//! added a CRC-32 after each encoded change and the meta table. Both may have a feed table,
//! position → (origin, seq); stores written before it existed have none.
//!
//! The conversion copies the changes in feed order into segments, in transactions of
//! [`CONVERSION_TRANSACTION_BYTES`] each, so its memory stays bounded. Only the last
//! transaction drops the old tables and records the new format. A conversion that stops
//! midway leaves the old tables whole, and the next start drops the partial segments and
//! converts again.

use std::path::Path;

use anyhow::Context;
use forum_protocol::ChangeId;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle, WriteTransaction};

use crate::segment;
use crate::store::{verified, SegmentWriter, WriteTables, FORMAT, META, META_FORMAT, RUNS, SEGMENTS};

/// Changes by (origin server id, sequence number): encoded [`forum_protocol::WireChange`]s,
/// followed in format 2 by the CRC-32 of the encoding, 4 bytes, little-endian.
pub(crate) const CHANGES: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("changes");

/// Change ids, (origin, seq), by feed position.
pub(crate) const FEED: TableDefinition<u64, (u32, u64)> = TableDefinition::new("feed");

/// The size of the segments that one conversion transaction writes.
const CONVERSION_TRANSACTION_BYTES: usize = 32 * 1024 * 1024;

/// Returns whether the store has the changes table of formats 1 and 2.
pub(crate) fn has_changes_table(transaction: &WriteTransaction) -> Result<bool, redb::StorageError> {
    Ok(transaction.list_tables()?.any(|table| table.name() == CHANGES.name()))
}

/// Converts a store of format 1 or 2 to the current format.
pub(crate) fn convert(database: &Database, path: &Path, format: u64) -> anyhow::Result<()> {
    if format == 1 {
        let transaction = database.begin_write().context("failed to start a write transaction")?;
        {
            let mut changes = transaction.open_table(CHANGES).context("failed to open the changes table")?;
            add_checksums(&mut changes).context("failed to add checksums to the changes")?;
            // So a conversion that stops later never adds the checksums twice.
            let mut meta = transaction.open_table(META).context("failed to open the meta table")?;
            meta.insert(META_FORMAT, 2).context("failed to record the format")?;
        }
        transaction.commit().context("failed to commit the checksums")?;
    }
    number_changes(database)?;

    let transaction = database.begin_write().context("failed to start a write transaction")?;
    transaction.delete_table(SEGMENTS).context("failed to drop the segments of an unfinished conversion")?;
    transaction.delete_table(RUNS).context("failed to drop the runs of an unfinished conversion")?;
    transaction.commit().context("failed to commit the dropped tables")?;

    let converted = copy_to_segments(database, path)?;

    let transaction = database.begin_write().context("failed to start a write transaction")?;
    {
        // An empty store has no segments to write, and needs the tables all the same.
        transaction.open_table(SEGMENTS).context("failed to open the segments table")?;
        transaction.open_table(RUNS).context("failed to open the runs table")?;
        transaction.delete_table(CHANGES).context("failed to drop the changes table")?;
        transaction.delete_table(FEED).context("failed to drop the feed table")?;
        let mut meta = transaction.open_table(META).context("failed to open the meta table")?;
        meta.insert(META_FORMAT, FORMAT).context("failed to record the format")?;
    }
    transaction.commit().context("failed to commit the converted store")?;
    tracing::info!(changes = converted, from = format, to = FORMAT, path = %path.display(), "converted the change store");
    Ok(())
}

/// Appends a checksum to every change of a format 1 store.
fn add_checksums(changes: &mut redb::Table<(u32, u64), &[u8]>) -> anyhow::Result<()> {
    let mut converted = Vec::new();
    for entry in changes.iter()? {
        let (key, value) = entry?;
        let mut bytes = value.value().to_vec();
        bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
        converted.push((key.value(), bytes));
    }
    if !converted.is_empty() {
        tracing::info!(changes = converted.len(), "adding checksums to the changes of a format 1 store");
    }
    for (key, bytes) in converted {
        changes.insert(key, bytes.as_slice())?;
    }
    Ok(())
}

/// Gives feed positions 1..=n, in (origin, seq) order, to the changes of a store written
/// before the feed existed.
fn number_changes(database: &Database) -> anyhow::Result<()> {
    let transaction = database.begin_write().context("failed to start a write transaction")?;
    {
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
    }
    transaction.commit().context("failed to commit the feed table")
}

/// Copies every change, in feed order, into segments, and returns how many it copied.
fn copy_to_segments(database: &Database, path: &Path) -> anyhow::Result<u64> {
    let shown = path.display();
    let reading = database.begin_read().context("failed to start a read transaction")?;
    let feed = reading.open_table(FEED).context("failed to open the feed table")?;
    let changes = reading.open_table(CHANGES).context("failed to open the changes table")?;
    let stored_feed = feed.len().context("failed to count the feed")?;
    let stored_changes = changes.len().context("failed to count the changes")?;
    if stored_feed != stored_changes {
        anyhow::bail!(
            "the feed of {shown} numbers {stored_feed} changes, but {stored_changes} are stored, so the store is \
             damaged; {}",
            crate::store::RECOVERY
        );
    }

    let mut copied = 0;
    let mut feed_entries = feed.iter().context("failed to read the feed")?.peekable();
    while feed_entries.peek().is_some() {
        let transaction = database.begin_write().context("failed to start a write transaction")?;
        {
            let mut tables = WriteTables::open(&transaction)?;
            let mut writer = SegmentWriter::new();
            let mut written = 0;
            while written < CONVERSION_TRANSACTION_BYTES {
                let Some(entry) = feed_entries.next() else { break };
                let (position, id) = entry.context("failed to read a feed entry")?;
                let (position, (origin, seq)) = (position.value(), id.value());
                let id = ChangeId::new(origin, seq);
                let stored = changes
                    .get((origin, seq))
                    .context("failed to read a change")?
                    .with_context(|| format!("feed position {position} names change {id}, which is not stored"))?;
                verified(stored.value(), id, path)?;
                writer.add(&mut tables, position, id, stored.value())?;
                written += segment::entry_len(stored.value().len());
                copied += 1;
            }
            writer.flush(&mut tables)?;
        }
        transaction.commit().context("failed to commit converted changes")?;
    }
    Ok(copied)
}
