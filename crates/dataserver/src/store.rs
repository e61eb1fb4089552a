//! The change log on disk: a redb file of segments, each holding the changes of one commit
//! at consecutive feed positions, and an index of runs to find one origin's changes.
//!
//! Every method blocks on file I/O, so async callers run them in `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::Bytes;
use forum_protocol::{decode, encode_change, Change, ChangeId, ServerId, WireChange};
use redb::{Database, ReadableTable, TableDefinition};

use crate::segment::{self, Entries, Run, MAX_SEGMENT_BYTES};
use crate::{feed, legacy};

/// The file name of the store inside the data directory.
pub const STORE_FILE: &str = "forum.redb";

/// The memory redb may use to cache pages of the store. redb 2 caches up to 1 GiB by default,
/// which a restart fills while replaying the store. The forum state is in memory anyway, so
/// the store needs little cache: writes append at the end, and reads are replays and catch-up
/// fetches that the operating system's page cache serves as well.
const STORE_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Segments by the feed position of their first change (see [`crate::segment`]).
pub(crate) const SEGMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("segments");

/// Runs by (origin, first sequence number), with the feed position of their segment and their
/// last sequence number. Each change is stored once, so the runs of one origin never overlap,
/// and the run that contains a sequence number is the last one that starts at or before it.
pub(crate) const RUNS: TableDefinition<(u32, u64), (u64, u64)> = TableDefinition::new("runs");

/// Facts about the store itself: its format and the id of the server that owns it.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const META_FORMAT: &str = "format";
const META_SERVER_ID: &str = "server_id";

/// The store format this program writes. Formats 1 and 2 stored one record per change and a
/// feed table; they are converted when opened (see [`crate::legacy`]).
pub(crate) const FORMAT: u64 = 3;

/// The length of the checksum at the end of every stored change.
const CHECKSUM_LEN: usize = 4;

/// A change encoded as a [`WireChange`], ready to store and to publish on the checkpoint topic.
#[derive(Clone, Debug)]
pub(crate) struct EncodedChange {
    pub id: ChangeId,
    pub bytes: Bytes,
}

impl EncodedChange {
    pub fn new(change: &Change) -> Self {
        let mut bytes = encode_change(change);
        let checksum = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        EncodedChange { id: change.id, bytes: Bytes::from(bytes) }
    }

    /// Returns the encoded [`WireChange`] without the checksum: the checkpoint message.
    pub fn wire(&self) -> Bytes {
        self.bytes.slice(..self.bytes.len() - CHECKSUM_LEN)
    }
}

/// Builds the error for the damaged stored change `id` in the store at `path`.
fn damaged(id: ChangeId, path: &Path, reason: &str) -> anyhow::Error {
    anyhow::anyhow!("the stored change {id} in {} is damaged ({reason}); {RECOVERY}", path.display())
}

/// Checks the checksum at the end of a stored change and returns the encoding before it.
/// `id` is the change's id as its record states, for the error, which names the change and
/// the store file.
pub(crate) fn verified<'a>(stored: &'a [u8], id: ChangeId, path: &Path) -> anyhow::Result<&'a [u8]> {
    let Some(split) = stored.len().checked_sub(CHECKSUM_LEN) else { return Err(damaged(id, path, "too short")) };
    let (encoded, checksum) = stored.split_at(split);
    if crc32fast::hash(encoded).to_le_bytes() != checksum {
        return Err(damaged(id, path, "its checksum does not match"));
    }
    Ok(encoded)
}

/// Checks a stored change's checksum, decodes it and checks that it is the change `id` that
/// its record states.
pub(crate) fn decode_stored(stored: &[u8], id: ChangeId, path: &Path) -> anyhow::Result<Change> {
    let encoded = verified(stored, id, path)?;
    let wire: WireChange = decode(encoded).map_err(|error| damaged(id, path, &format!("it cannot be decoded: {error}")))?;
    if wire.change.id != id {
        return Err(damaged(id, path, &format!("it holds change {}", wire.change.id)));
    }
    Ok(wire.change)
}

/// The recovery steps for a damaged store, appended to every error about one.
pub(crate) const RECOVERY: &str = "move the whole data directory away and start this server with a new --id that \
     the group has never used, so it fetches the whole history from its peers (see docs/replication.md)";

/// An open change log. Dropping it closes the file.
pub(crate) struct Store {
    database: Database,
    path: PathBuf,
    /// The feed position that the next stored change gets.
    next_position: AtomicU64,
    /// How many of the next appends fail without writing, for tests of the recovery.
    #[cfg(test)]
    pub failing_appends: std::sync::atomic::AtomicU32,
}

/// Returns the id of the server that owns the store in `data_dir`, when there is a store that
/// records it. Stores written before the owner was recorded, and damaged ones, give `None`.
pub fn store_owner(data_dir: &Path) -> Option<ServerId> {
    let path = data_dir.join(STORE_FILE);
    if std::fs::metadata(&path).map_or(true, |metadata| metadata.len() == 0) {
        return None;
    }
    // redb panics on some damaged files; the start that follows reports those with the path.
    std::panic::catch_unwind(|| {
        let database = Database::builder().set_cache_size(1024 * 1024).open(&path).ok()?;
        let transaction = database.begin_read().ok()?;
        let meta = transaction.open_table(META).ok()?;
        let owner = meta.get(META_SERVER_ID).ok()??.value();
        ServerId::try_from(owner).ok()
    })
    .ok()
    .flatten()
}

/// Creates the tables when missing, checks the owner's id and converts an older format.
fn prepare(database: &Database, path: &Path, server: ServerId) -> anyhow::Result<()> {
    let shown = path.display();
    let transaction = database.begin_write().with_context(|| format!("failed to write to {shown}"))?;
    let older_format = {
        let mut meta = transaction.open_table(META).with_context(|| format!("failed to open the meta table in {shown}"))?;
        let read = |meta: &redb::Table<&str, u64>, key: &str| -> anyhow::Result<Option<u64>> {
            Ok(meta.get(key).with_context(|| format!("failed to read {key} in {shown}"))?.map(|value| value.value()))
        };
        match read(&meta, META_SERVER_ID)? {
            Some(owner) if owner != u64::from(server) => anyhow::bail!(
                "the change store {shown} belongs to server id {owner}, not {server}; start with --id {owner}, or \
                 use another data directory"
            ),
            Some(_) => {}
            None => {
                meta.insert(META_SERVER_ID, u64::from(server)).with_context(|| format!("failed to write to {shown}"))?;
            }
        }
        match read(&meta, META_FORMAT)? {
            Some(FORMAT) => None,
            Some(newer) if newer > FORMAT => anyhow::bail!(
                "the change store {shown} has format {newer}, which this program (format {FORMAT}) cannot read; \
                 run a newer data server"
            ),
            // A store without a format is new, or of format 1 when it has a changes table.
            None if !legacy::has_changes_table(&transaction).with_context(|| format!("failed to list the tables of {shown}"))? => {
                meta.insert(META_FORMAT, FORMAT).with_context(|| format!("failed to write to {shown}"))?;
                None
            }
            None => Some(1),
            Some(older) => Some(older),
        }
    };
    if older_format.is_none() {
        transaction.open_table(SEGMENTS).with_context(|| format!("failed to open the segments table in {shown}"))?;
        transaction.open_table(RUNS).with_context(|| format!("failed to open the runs table in {shown}"))?;
    }
    transaction.commit().with_context(|| format!("failed to commit to {shown}"))?;
    if let Some(format) = older_format {
        legacy::convert(database, path, format).with_context(|| format!("failed to convert {shown} to format {FORMAT}"))?;
    }
    Ok(())
}

/// Returns the feed position after the last stored change: 1 for an empty store.
fn next_position(segments: &impl ReadableTable<u64, &'static [u8]>, path: &Path) -> anyhow::Result<u64> {
    let Some((first, segment)) = segments.last()? else { return Ok(1) };
    let first = first.value();
    Ok(first + segment::count(segment.value(), first, path)?)
}

/// The tables that a commit writes.
pub(crate) struct WriteTables<'transaction> {
    segments: redb::Table<'transaction, u64, &'static [u8]>,
    runs: redb::Table<'transaction, (u32, u64), (u64, u64)>,
}

impl<'transaction> WriteTables<'transaction> {
    pub fn open(transaction: &'transaction redb::WriteTransaction) -> anyhow::Result<Self> {
        Ok(WriteTables {
            segments: transaction.open_table(SEGMENTS).context("failed to open the segments table")?,
            runs: transaction.open_table(RUNS).context("failed to open the runs table")?,
        })
    }
}

/// Collects changes at feed positions into segments, and writes a segment with its runs once
/// it is full, when the next change's position does not follow, and at the end.
pub(crate) struct SegmentWriter {
    /// The feed position of the segment's first change.
    start: u64,
    /// The feed position that the next change of this segment would get.
    next: u64,
    value: Vec<u8>,
    ids: Vec<ChangeId>,
}

impl SegmentWriter {
    pub fn new() -> Self {
        SegmentWriter { start: 0, next: 0, value: Vec::new(), ids: Vec::new() }
    }

    /// Adds the change `id`, stored as `stored`, at feed position `position`.
    pub fn add(&mut self, tables: &mut WriteTables, position: u64, id: ChangeId, stored: &[u8]) -> anyhow::Result<()> {
        let full = self.value.len() + segment::entry_len(stored.len()) > MAX_SEGMENT_BYTES;
        if !self.value.is_empty() && (full || position != self.next) {
            self.flush(tables)?;
        }
        if self.value.is_empty() {
            self.start = position;
        }
        segment::push(&mut self.value, id, stored);
        self.ids.push(id);
        self.next = position + 1;
        Ok(())
    }

    /// Writes the segment being collected, if any.
    pub fn flush(&mut self, tables: &mut WriteTables) -> anyhow::Result<()> {
        if self.value.is_empty() {
            return Ok(());
        }
        let start = self.start;
        tables
            .segments
            .insert(start, self.value.as_slice())
            .with_context(|| format!("failed to store the segment at feed position {start}"))?;
        for Run { origin, first_seq, last_seq } in segment::runs(self.ids.drain(..)) {
            tables
                .runs
                .insert((origin, first_seq), (start, last_seq))
                .with_context(|| format!("failed to index changes {origin}-{first_seq} to {origin}-{last_seq}"))?;
        }
        self.value.clear();
        Ok(())
    }
}

impl Store {
    /// Opens `forum.redb` in `data_dir` for server `server`, creating the directory and the
    /// file when missing, and converting a store of an older format. Fails when the store
    /// belongs to another server id, or is damaged.
    pub fn open(data_dir: &Path, server: ServerId) -> anyhow::Result<Store> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("failed to create the data directory {}", data_dir.display()))?;
        let path = data_dir.join(STORE_FILE);
        let database = Database::builder().set_cache_size(STORE_CACHE_BYTES).create(&path).map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen => anyhow::anyhow!(
                "the change store {} is already open in another data server process; stop that \
                 process or choose another data directory",
                path.display()
            ),
            error => anyhow::Error::new(error)
                .context(format!("failed to open the change store {}; if it is damaged, {RECOVERY}", path.display())),
        })?;
        prepare(&database, &path, server)?;
        let shown = path.display();
        let transaction = database.begin_read().with_context(|| format!("failed to read {shown}"))?;
        let segments = transaction.open_table(SEGMENTS).with_context(|| format!("failed to open the segments table in {shown}"))?;
        let next_position = next_position(&segments, &path).with_context(|| format!("failed to read the newest segment in {shown}"))?;
        drop(segments);
        drop(transaction);
        Ok(Store {
            database,
            path,
            next_position: AtomicU64::new(next_position),
            #[cfg(test)]
            failing_appends: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Reads at most `limit` changes of the feed after position `after`, redacted, with the
    /// newest position (see [`feed::read_after`]).
    pub fn feed_after(&self, after: u64, limit: usize) -> anyhow::Result<(Vec<forum_protocol::FeedEntry>, u64)> {
        feed::read_after(&self.database, &self.path, after, limit)
    }

    /// Returns the path of the store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every stored change, in feed order.
    #[cfg(test)]
    pub fn load(&self) -> anyhow::Result<Vec<Change>> {
        let mut changes = Vec::new();
        self.replay(|change| changes.push(change))?;
        Ok(changes)
    }

    /// Hands every stored change to `apply` in feed order, the order in which this server
    /// applied them, one at a time, so a replay never keeps the whole store in memory.
    pub fn replay(&self, mut apply: impl FnMut(Change)) -> anyhow::Result<()> {
        let path = self.path.display();
        let transaction = self.database.begin_read().with_context(|| format!("failed to read {path}"))?;
        let segments = transaction.open_table(SEGMENTS).with_context(|| format!("failed to open the segments table in {path}"))?;
        for record in segments.iter().with_context(|| format!("failed to read the segments table in {path}"))? {
            let (first, value) = record.with_context(|| format!("failed to read a segment from {path}"))?;
            for entry in Entries::new(value.value(), first.value(), &self.path) {
                let entry = entry?;
                apply(decode_stored(entry.stored, entry.id, &self.path)?);
            }
        }
        Ok(())
    }

    /// Reads the stored changes of `origin` with a sequence number above `after_seq`, in
    /// sequence order: at most `limit` of them, and no more once their encoded size reaches
    /// `max_bytes` (at least one change is returned when any is stored).
    pub fn changes_after(&self, origin: ServerId, after_seq: u64, limit: usize, max_bytes: usize) -> anyhow::Result<Vec<Change>> {
        let path = self.path.display();
        let transaction = self.database.begin_read().with_context(|| format!("failed to read {path}"))?;
        let runs = transaction.open_table(RUNS).with_context(|| format!("failed to open the runs table in {path}"))?;
        let segments = transaction.open_table(SEGMENTS).with_context(|| format!("failed to open the segments table in {path}"))?;
        let Some(first_wanted) = after_seq.checked_add(1) else { return Ok(Vec::new()) };

        // The run that contains `first_wanted`, if any, starts at or before it.
        let holding = runs
            .range(..=(origin, first_wanted))
            .with_context(|| format!("failed to read the runs table in {path}"))?
            .next_back()
            .transpose()
            .with_context(|| format!("failed to read a run from {path}"))?
            .map(|(key, value)| (key.value(), value.value()))
            .filter(|&((run_origin, _), (_, last_seq))| run_origin == origin && last_seq >= first_wanted);
        let start = holding.map_or(first_wanted, |((_, first_seq), _)| first_seq);

        let mut changes = Vec::new();
        let mut bytes = 0;
        for run in runs.range((origin, start)..=(origin, u64::MAX)).with_context(|| format!("failed to read the runs table in {path}"))? {
            if changes.len() >= limit || (bytes >= max_bytes && !changes.is_empty()) {
                break;
            }
            let (key, value) = run.with_context(|| format!("failed to read a run from {path}"))?;
            let ((_, first_seq), (position, last_seq)) = (key.value(), value.value());
            let segment = segments
                .get(position)
                .with_context(|| format!("failed to read the segment at feed position {position} from {path}"))?
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "the index of {path} names changes {origin}-{first_seq} to {origin}-{last_seq} at feed position \
                         {position}, which is not stored; {RECOVERY}"
                    )
                })?;

            // A run's changes are in feed order in their segment, which is not always their
            // sequence order.
            let mut found = Vec::new();
            for entry in Entries::new(segment.value(), position, &self.path) {
                let entry = entry?;
                if entry.id.origin == origin && (first_seq..=last_seq).contains(&entry.id.seq) {
                    found.push((entry.id, entry.stored));
                }
            }
            if found.len() as u64 != last_seq - first_seq + 1 {
                anyhow::bail!(
                    "the index of {path} names changes {origin}-{first_seq} to {origin}-{last_seq} at feed position \
                     {position}, but that segment holds {} of them; {RECOVERY}",
                    found.len()
                );
            }
            found.sort_unstable_by_key(|(id, _)| id.seq);
            for &(id, stored) in found.iter().filter(|(id, _)| id.seq >= first_wanted) {
                if changes.len() >= limit || (bytes >= max_bytes && !changes.is_empty()) {
                    break;
                }
                bytes += stored.len();
                changes.push(decode_stored(stored, id, &self.path)?);
            }
        }
        Ok(changes)
    }

    /// Stores changes in one write transaction, at the next feed positions, and returns once
    /// it is committed to disk. Returns the feed position of the first change; the others
    /// follow it in order. Only the actor calls it, so appends never overlap.
    pub fn append(&self, changes: &[EncodedChange]) -> anyhow::Result<u64> {
        let path = self.path.display();
        #[cfg(test)]
        if self.failing_appends.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(1)).is_ok() {
            anyhow::bail!("failed to write to {path}: a failure that the test asked for");
        }
        let first_position = self.next_position.load(Ordering::Acquire);
        let transaction = self.database.begin_write().with_context(|| format!("failed to write to {path}"))?;
        {
            let mut tables = WriteTables::open(&transaction).with_context(|| format!("failed to write to {path}"))?;
            let mut writer = SegmentWriter::new();
            for (position, change) in (first_position..).zip(changes) {
                writer
                    .add(&mut tables, position, change.id, &change.bytes)
                    .with_context(|| format!("failed to store change {} in {path}", change.id))?;
            }
            writer.flush(&mut tables).with_context(|| format!("failed to write to {path}"))?;
        }
        transaction.commit().with_context(|| format!("failed to commit {} changes to {path}", changes.len()))?;
        self.next_position.store(first_position + changes.len() as u64, Ordering::Release);
        Ok(first_position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forum_protocol::ChangeKind;
    use redb::TableHandle;

    fn presence_of(origin: ServerId, seq: u64) -> Change {
        let kind = ChangeKind::PresenceChanged { user: "ana".into(), webserver: "w1".into(), online: seq % 2 == 1 };
        Change { id: ChangeId::new(origin, seq), lamport: seq, time: 0, kind, key: None }
    }

    fn presence(seq: u64) -> Change {
        presence_of(3, seq)
    }

    fn encoded(changes: &[Change]) -> Vec<EncodedChange> {
        changes.iter().map(EncodedChange::new).collect()
    }

    fn seqs(changes: Vec<Change>) -> Vec<u64> {
        changes.into_iter().map(|change| change.id.seq).collect()
    }

    /// Rebuilds the segment stored at feed position `first`, with `replace` choosing the
    /// stored bytes of each entry.
    fn rewrite_segment(store: &Store, first: u64, replace: impl Fn(ChangeId, &[u8]) -> Vec<u8>) {
        let transaction = store.database.begin_write().unwrap();
        {
            let mut segments = transaction.open_table(SEGMENTS).unwrap();
            let old = segments.get(first).unwrap().unwrap().value().to_vec();
            let mut new = Vec::new();
            for entry in Entries::new(&old, first, &store.path) {
                let entry = entry.unwrap();
                segment::push(&mut new, entry.id, &replace(entry.id, entry.stored));
            }
            segments.insert(first, new.as_slice()).unwrap();
        }
        transaction.commit().unwrap();
    }

    #[test]
    fn store_keeps_changes_across_reopen() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), 3).unwrap();
        assert!(store.load().unwrap().is_empty());
        store.append(&encoded(&[presence(2), presence(1)])).unwrap();
        drop(store);

        let store = Store::open(directory.path(), 3).unwrap();
        assert_eq!(store.load().unwrap(), vec![presence(2), presence(1)], "a replay keeps the feed order");
    }

    #[test]
    fn changes_after_reads_one_origin_in_order() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), 3).unwrap();
        store.append(&encoded(&[presence(3), presence(1), presence(2), presence(4), presence_of(4, 1)])).unwrap();

        assert_eq!(seqs(store.changes_after(3, 1, 2, usize::MAX).unwrap()), [2, 3]);
        assert_eq!(seqs(store.changes_after(3, 0, 100, 1).unwrap()), [1], "the byte limit still returns one change");
        assert!(store.changes_after(3, 4, 100, usize::MAX).unwrap().is_empty());
        assert!(store.changes_after(9, 0, 100, usize::MAX).unwrap().is_empty());
        assert_eq!(seqs(store.changes_after(4, 0, 100, usize::MAX).unwrap()), [1]);
        assert!(store.changes_after(3, u64::MAX, 100, usize::MAX).unwrap().is_empty());
    }

    #[test]
    fn changes_after_spans_segments_out_of_order() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), 3).unwrap();
        // Changes of one origin can arrive after a gap: 5 first, then 3 and 4 with another
        // origin between them, then 1, 2 and 6.
        store.append(&encoded(&[presence(5)])).unwrap();
        store.append(&encoded(&[presence(4), presence_of(4, 1), presence(3)])).unwrap();
        store.append(&encoded(&[presence(6), presence(1), presence(2), presence(8)])).unwrap();

        assert_eq!(seqs(store.changes_after(3, 0, 100, usize::MAX).unwrap()), [1, 2, 3, 4, 5, 6, 8]);
        assert_eq!(seqs(store.changes_after(3, 3, 100, usize::MAX).unwrap()), [4, 5, 6, 8]);
        assert_eq!(seqs(store.changes_after(3, 2, 2, usize::MAX).unwrap()), [3, 4]);
        assert_eq!(seqs(store.changes_after(3, 6, 100, usize::MAX).unwrap()), [8], "the missing 7 is skipped");
        assert_eq!(seqs(store.changes_after(4, 0, 100, usize::MAX).unwrap()), [1]);

        drop(store);
        let store = Store::open(directory.path(), 3).unwrap();
        assert_eq!(seqs(store.load().unwrap()), [5, 4, 1, 3, 6, 1, 2, 8], "a replay keeps the feed order");
    }

    #[test]
    fn large_commit_splits_into_segments() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), 3).unwrap();
        let first: Vec<Change> = (1..=2000).map(presence).collect();
        let stored_bytes: usize = encoded(&first).iter().map(|change| segment::entry_len(change.bytes.len())).sum();
        assert!(stored_bytes > 2 * MAX_SEGMENT_BYTES, "the test needs at least three segments");
        assert_eq!(store.append(&encoded(&first)).unwrap(), 1);
        assert_eq!(store.append(&encoded(&[presence(2001)])).unwrap(), 2001);
        drop(store);

        let store = Store::open(directory.path(), 3).unwrap();
        assert_eq!(store.append(&encoded(&[presence(2002)])).unwrap(), 2002, "the next position survives a reopen");
        let transaction = store.database.begin_read().unwrap();
        let segment_count = transaction.open_table(SEGMENTS).unwrap().iter().unwrap().count();
        assert!(segment_count >= 5, "{segment_count} segments");
        drop(transaction);

        assert_eq!(seqs(store.load().unwrap()), (1..=2002).collect::<Vec<_>>());
        assert_eq!(seqs(store.changes_after(3, 1234, 1000, usize::MAX).unwrap()), (1235..=2002).collect::<Vec<_>>());
        let (entries, last) = store.feed_after(1500, 600).unwrap();
        assert_eq!(last, 2002);
        let positions: Vec<u64> = entries.iter().map(|entry| entry.position).collect();
        assert_eq!(positions, (1501..=2002).collect::<Vec<_>>());
        let sizes: Vec<usize> = [0, 999, 1000, 2001, 2002].iter().map(|&after| store.feed_after(after, 1).unwrap().0.len()).collect();
        assert_eq!(sizes, [1, 1, 1, 1, 0]);
    }

    #[test]
    fn damaged_record_fails_whole_load() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), 3).unwrap();
        store.append(&encoded(&[presence(1), presence(2), presence(3)])).unwrap();
        rewrite_segment(&store, 1, |id, stored| if id.seq == 2 { b"\xc1 not messagepack".to_vec() } else { stored.to_vec() });
        drop(store);

        let store = Store::open(directory.path(), 3).unwrap();
        let message = format!("{:#}", store.load().expect_err("a damaged record fails the load"));
        assert!(message.contains("3-2"), "{message}");
        assert!(message.contains(&directory.path().join(STORE_FILE).display().to_string()), "{message}");
    }

    #[test]
    fn wrong_change_in_record_is_detected() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), 3).unwrap();
        store.append(&encoded(&[presence(1), presence(2)])).unwrap();
        let first = EncodedChange::new(&presence(1));
        rewrite_segment(&store, 1, |_, _| first.bytes.to_vec());

        let message = format!("{:#}", store.load().expect_err("a record holding another change fails the load"));
        assert!(message.contains("3-2"), "{message}");
        assert!(message.contains("holds change 3-1"), "{message}");
    }

    #[test]
    fn cut_segment_is_detected() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), 3).unwrap();
        store.append(&encoded(&[presence(1), presence(2)])).unwrap();
        let transaction = store.database.begin_write().unwrap();
        {
            let mut segments = transaction.open_table(SEGMENTS).unwrap();
            let mut value = segments.get(1).unwrap().unwrap().value().to_vec();
            value.truncate(value.len() - 10);
            segments.insert(1, value.as_slice()).unwrap();
        }
        transaction.commit().unwrap();

        let message = format!("{:#}", store.load().expect_err("a cut segment fails the load"));
        assert!(message.contains("feed position 2"), "{message}");
        assert!(message.contains(&directory.path().join(STORE_FILE).display().to_string()), "{message}");
        let message = format!("{:#}", store.changes_after(3, 0, 10, usize::MAX).expect_err("and a fetch"));
        assert!(message.contains("feed position 2"), "{message}");
    }

    #[test]
    fn feed_positions_survive_reopen() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), 3).unwrap();
        assert_eq!(store.append(&encoded(&[presence(2), presence(1)])).unwrap(), 1);
        drop(store);

        let store = Store::open(directory.path(), 3).unwrap();
        assert_eq!(store.append(&encoded(&[presence(3)])).unwrap(), 3);
        let (entries, last) = store.feed_after(1, 10).unwrap();
        assert_eq!(last, 3);
        let read: Vec<(u64, u64)> = entries.iter().map(|entry| (entry.position, entry.change.id.seq)).collect();
        assert_eq!(read, [(2, 1), (3, 3)], "positions follow the order of storing, not of ids");
        assert_eq!(store.feed_after(0, 1).unwrap().0.len(), 1, "the limit is kept");
        assert!(store.feed_after(3, 10).unwrap().0.is_empty());
    }

    #[test]
    fn changed_byte_is_detected() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), 3).unwrap();
        store.append(&encoded(&[presence(1), presence(2)])).unwrap();
        rewrite_segment(&store, 1, |id, stored| {
            let mut stored = stored.to_vec();
            if id.seq == 2 {
                // The user name "ana" becomes "anb": still a valid change, with the wrong content.
                let at = stored.windows(3).position(|window| window == b"ana").unwrap();
                stored[at + 2] = b'b';
            }
            stored
        });
        drop(store);

        let store = Store::open(directory.path(), 3).unwrap();
        let message = format!("{:#}", store.load().expect_err("a changed byte fails the load"));
        assert!(message.contains("3-2"), "{message}");
        assert!(message.contains("checksum"), "{message}");
        assert!(message.contains(&directory.path().join(STORE_FILE).display().to_string()), "{message}");
        let message = format!("{:#}", store.changes_after(3, 0, 10, usize::MAX).expect_err("and a fetch"));
        assert!(message.contains("3-2"), "{message}");
        let message = format!("{:#}", store.feed_after(0, 10).expect_err("and a feed read"));
        assert!(message.contains("3-2"), "{message}");
    }

    #[test]
    fn store_of_another_server_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        assert_eq!(store_owner(directory.path()), None, "no store yet");
        drop(Store::open(directory.path(), 3).unwrap());
        assert_eq!(store_owner(directory.path()), Some(3));
        let message = format!("{:#}", Store::open(directory.path(), 4).err().expect("another id is refused"));
        assert!(message.contains("belongs to server id 3, not 4"), "{message}");
    }

    /// Reads the format recorded in the store at `path` and the names of its tables.
    fn format_and_tables(path: &Path) -> (Option<u64>, Vec<String>) {
        let database = Database::open(path).unwrap();
        let transaction = database.begin_read().unwrap();
        let format = transaction.open_table(META).unwrap().get(META_FORMAT).unwrap().map(|value| value.value());
        let mut tables: Vec<String> = transaction.list_tables().unwrap().map(|table| table.name().to_owned()).collect();
        tables.sort();
        (format, tables)
    }

    #[test]
    fn format_1_store_is_converted() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(STORE_FILE);
        {
            let database = Database::create(&path).unwrap();
            let transaction = database.begin_write().unwrap();
            {
                let mut table = transaction.open_table(legacy::CHANGES).unwrap();
                for change in [presence(2), presence(1)] {
                    let bytes = encode_change(&change);
                    table.insert((change.id.origin, change.id.seq), bytes.as_slice()).unwrap();
                }
            }
            transaction.commit().unwrap();
        }
        let store = Store::open(directory.path(), 3).unwrap();
        assert_eq!(store.load().unwrap(), vec![presence(1), presence(2)], "without a feed, positions follow the ids");
        drop(store);
        assert_eq!(format_and_tables(&path), (Some(FORMAT), vec!["meta".into(), "runs".into(), "segments".into()]));

        let store = Store::open(directory.path(), 3).unwrap();
        assert_eq!(store.load().unwrap(), vec![presence(1), presence(2)], "converted once, read again");
        assert_eq!(store.append(&encoded(&[presence(3)])).unwrap(), 3);
    }

    /// Writes a format 2 store, as the previous data server did: `changes` at feed positions
    /// 1, 2, 3... in the given order, and optionally a segments table left by a conversion
    /// that stopped midway.
    fn write_format_2_store(path: &Path, changes: &[Change], unfinished_conversion: bool) {
        let database = Database::create(path).unwrap();
        let transaction = database.begin_write().unwrap();
        {
            let mut table = transaction.open_table(legacy::CHANGES).unwrap();
            let mut feed = transaction.open_table(legacy::FEED).unwrap();
            for (position, change) in (1..).zip(changes) {
                let stored = EncodedChange::new(change);
                table.insert((change.id.origin, change.id.seq), stored.bytes.as_ref()).unwrap();
                feed.insert(position, (change.id.origin, change.id.seq)).unwrap();
            }
            let mut meta = transaction.open_table(META).unwrap();
            meta.insert(META_FORMAT, 2).unwrap();
            meta.insert(META_SERVER_ID, 3).unwrap();
            if unfinished_conversion {
                transaction.open_table(SEGMENTS).unwrap().insert(1, b"partial".as_slice()).unwrap();
                transaction.open_table(RUNS).unwrap().insert((3, 1), (1, 1)).unwrap();
            }
        }
        transaction.commit().unwrap();
    }

    #[test]
    fn format_2_store_is_converted() {
        for unfinished_conversion in [false, true] {
            let directory = tempfile::tempdir().unwrap();
            let path = directory.path().join(STORE_FILE);
            let mut changes: Vec<Change> = (1..=1500).map(presence).collect();
            changes.swap(0, 10);
            changes.insert(5, presence_of(4, 1));
            write_format_2_store(&path, &changes, unfinished_conversion);
            assert_eq!(store_owner(directory.path()), Some(3));

            let store = Store::open(directory.path(), 3).unwrap();
            assert_eq!(store.load().unwrap(), changes, "the feed order is kept ({unfinished_conversion})");
            let (entries, last) = store.feed_after(5, 2).unwrap();
            assert_eq!(last, 1501);
            let read: Vec<(u64, ChangeId)> = entries.iter().map(|entry| (entry.position, entry.change.id)).collect();
            assert_eq!(read, [(6, ChangeId::new(4, 1)), (7, ChangeId::new(3, 6))]);
            assert_eq!(seqs(store.changes_after(3, 0, 12, usize::MAX).unwrap()), (1..=12).collect::<Vec<_>>());
            assert_eq!(seqs(store.changes_after(4, 0, 12, usize::MAX).unwrap()), [1]);
            assert_eq!(store.append(&encoded(&[presence(1501)])).unwrap(), 1502);
            drop(store);
            assert_eq!(format_and_tables(&path), (Some(FORMAT), vec!["meta".into(), "runs".into(), "segments".into()]));

            let store = Store::open(directory.path(), 3).unwrap();
            assert_eq!(store.load().unwrap().len(), 1502, "converted once, read again");
        }
    }

    #[test]
    fn damaged_format_2_change_stops_conversion() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(STORE_FILE);
        write_format_2_store(&path, &[presence(1), presence(2)], false);
        {
            let database = Database::open(&path).unwrap();
            let transaction = database.begin_write().unwrap();
            transaction.open_table(legacy::CHANGES).unwrap().insert((3, 2), b"\xc1 not messagepack".as_slice()).unwrap();
            transaction.commit().unwrap();
        }

        let message = format!("{:#}", Store::open(directory.path(), 3).err().expect("a damaged change stops the conversion"));
        assert!(message.contains("3-2"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert_eq!(format_and_tables(&path).0, Some(2), "the store keeps its old format");
    }

    #[test]
    fn new_store_has_current_format() {
        let directory = tempfile::tempdir().unwrap();
        drop(Store::open(directory.path(), 3).unwrap());
        let path = directory.path().join(STORE_FILE);
        assert_eq!(format_and_tables(&path), (Some(FORMAT), vec!["meta".into(), "runs".into(), "segments".into()]));
    }

    #[test]
    fn damaged_store_error_names_path() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join(STORE_FILE), b"not a redb file, just some bytes".repeat(200)).unwrap();
        let error = Store::open(directory.path(), 3).err().expect("a damaged file is rejected");
        let message = format!("{error:#}");
        assert!(message.contains(STORE_FILE), "{message}");
        assert!(message.contains(&directory.path().display().to_string()), "{message}");
    }
}
