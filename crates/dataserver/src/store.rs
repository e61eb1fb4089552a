//! The change log on disk: a redb table of every applied change, keyed by (origin, seq).
//!
//! Every method blocks on file I/O, so async callers run them in `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::Bytes;
use forum_protocol::{decode, encode_change, Change, ChangeId, ServerId, WireChange};
use redb::{Database, ReadableTable, TableDefinition};

use crate::feed;

/// The file name of the store inside the data directory.
pub const STORE_FILE: &str = "forum.redb";

/// The memory redb may use to cache pages of the store. redb 2 caches up to 1 GiB by default,
/// which a restart fills while replaying the store. The forum state is in memory anyway, so
/// the store needs little cache: writes append at the end, and reads are replays and catch-up
/// fetches that the operating system's page cache serves as well.
const STORE_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Changes by (origin server id, sequence number); values are encoded [`WireChange`]s followed
/// by the CRC-32 of the encoding, 4 bytes, little-endian.
pub(crate) const CHANGES: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("changes");

/// Facts about the store itself: its format and the id of the server that owns it.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_FORMAT: &str = "format";
const META_SERVER_ID: &str = "server_id";

/// The store format this program writes. Format 1 had no meta table and no checksums; a format
/// 1 store is converted when it is opened.
const FORMAT: u64 = 2;

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

/// Checks a stored value's checksum and decodes its change. `origin` and `seq` are its key,
/// for the error, which names the change and the store file.
pub(crate) fn decode_stored(value: &[u8], origin: ServerId, seq: u64, path: &Path) -> anyhow::Result<Change> {
    let damaged = |reason: &str| {
        anyhow::anyhow!(
            "the stored change {origin}-{seq} in {} is damaged ({reason}); {RECOVERY}",
            path.display()
        )
    };
    let Some(split) = value.len().checked_sub(CHECKSUM_LEN) else { return Err(damaged("too short")) };
    let (encoded, checksum) = value.split_at(split);
    if crc32fast::hash(encoded).to_le_bytes() != checksum {
        return Err(damaged("its checksum does not match"));
    }
    let wire: WireChange = decode(encoded).map_err(|error| damaged(&format!("it cannot be decoded: {error}")))?;
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
    {
        let mut changes = transaction.open_table(CHANGES).with_context(|| format!("failed to open the changes table in {shown}"))?;
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
            Some(FORMAT) => {}
            Some(newer) => anyhow::bail!(
                "the change store {shown} has format {newer}, which this program (format {FORMAT}) cannot read; \
                 run a newer data server"
            ),
            None => {
                add_checksums(&mut changes).with_context(|| format!("failed to convert {shown} to format {FORMAT}"))?;
                meta.insert(META_FORMAT, FORMAT).with_context(|| format!("failed to write to {shown}"))?;
            }
        }
    }
    transaction.commit().with_context(|| format!("failed to commit to {shown}"))
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

impl Store {
    /// Opens `forum.redb` in `data_dir` for server `server`, creating the directory and the
    /// file when missing. Fails when the store belongs to another server id, or is damaged.
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
        let last_position = feed::open(&database).with_context(|| format!("failed to open the feed in {}", path.display()))?;
        Ok(Store {
            database,
            path,
            next_position: AtomicU64::new(last_position + 1),
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

    /// Reads every stored change, ordered by (origin, seq).
    #[cfg(test)]
    pub fn load(&self) -> anyhow::Result<Vec<Change>> {
        let mut changes = Vec::new();
        self.replay(|change| changes.push(change))?;
        Ok(changes)
    }

    /// Hands every stored change to `apply`, ordered by (origin, seq), one at a time, so a
    /// replay never keeps the whole store in memory.
    pub fn replay(&self, mut apply: impl FnMut(Change)) -> anyhow::Result<()> {
        let path = self.path.display();
        let transaction = self.database.begin_read().with_context(|| format!("failed to read {path}"))?;
        let table = transaction.open_table(CHANGES).with_context(|| format!("failed to open the changes table in {path}"))?;
        for entry in table.iter().with_context(|| format!("failed to read the changes table in {path}"))? {
            let (key, value) = entry.with_context(|| format!("failed to read a change from {path}"))?;
            let (origin, seq) = key.value();
            apply(decode_stored(value.value(), origin, seq, &self.path)?);
        }
        Ok(())
    }

    /// Reads the stored changes of `origin` with a sequence number above `after_seq`, in
    /// sequence order: at most `limit` of them, and no more once their encoded size reaches
    /// `max_bytes` (at least one change is returned when any is stored).
    pub fn changes_after(&self, origin: ServerId, after_seq: u64, limit: usize, max_bytes: usize) -> anyhow::Result<Vec<Change>> {
        let path = self.path.display();
        let transaction = self.database.begin_read().with_context(|| format!("failed to read {path}"))?;
        let table = transaction.open_table(CHANGES).with_context(|| format!("failed to open the changes table in {path}"))?;
        let range = table
            .range((origin, after_seq.saturating_add(1))..=(origin, u64::MAX))
            .with_context(|| format!("failed to read the changes table in {path}"))?;
        let mut changes = Vec::new();
        let mut bytes = 0;
        for entry in range {
            if changes.len() >= limit || (bytes >= max_bytes && !changes.is_empty()) {
                break;
            }
            let (key, value) = entry.with_context(|| format!("failed to read a change from {path}"))?;
            let (origin, seq) = key.value();
            bytes += value.value().len();
            changes.push(decode_stored(value.value(), origin, seq, &self.path)?);
        }
        Ok(changes)
    }

    /// Stores changes in one write transaction, with their feed positions, and returns once
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
            let mut table =
                transaction.open_table(CHANGES).with_context(|| format!("failed to open the changes table in {path}"))?;
            for change in changes {
                table
                    .insert((change.id.origin, change.id.seq), change.bytes.as_ref())
                    .with_context(|| format!("failed to store change {} in {path}", change.id))?;
            }
        }
        let ids = changes.iter().map(|change| change.id);
        feed::record(&transaction, first_position, ids).with_context(|| format!("failed to write the feed in {path}"))?;
        transaction.commit().with_context(|| format!("failed to commit {} changes to {path}", changes.len()))?;
        self.next_position.store(first_position + changes.len() as u64, Ordering::Release);
        Ok(first_position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forum_protocol::ChangeKind;

    fn presence(seq: u64) -> Change {
        let kind = ChangeKind::PresenceChanged { user: "ana".into(), webserver: "w1".into(), online: seq % 2 == 1 };
        Change { id: ChangeId::new(3, seq), lamport: seq, time: 0, kind, key: None }
    }

    fn encoded(changes: &[Change]) -> Vec<EncodedChange> {
        changes.iter().map(EncodedChange::new).collect()
    }

    #[test]
    fn store_keeps_changes_across_reopen() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), 3).unwrap();
        assert!(store.load().unwrap().is_empty());
        store.append(&encoded(&[presence(2), presence(1)])).unwrap();
        drop(store);

        let store = Store::open(directory.path(), 3).unwrap();
        assert_eq!(store.load().unwrap(), vec![presence(1), presence(2)]);
    }

    #[test]
    fn changes_after_reads_one_origin_in_order() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), 3).unwrap();
        let mut other = presence(1);
        other.id = ChangeId::new(4, 1);
        store.append(&encoded(&[presence(3), presence(1), presence(2), presence(4), other])).unwrap();

        let ids = |changes: Vec<Change>| changes.into_iter().map(|change| change.id.seq).collect::<Vec<_>>();
        assert_eq!(ids(store.changes_after(3, 1, 2, usize::MAX).unwrap()), [2, 3]);
        assert_eq!(ids(store.changes_after(3, 0, 100, 1).unwrap()), [1], "the byte limit still returns one change");
        assert!(store.changes_after(3, 4, 100, usize::MAX).unwrap().is_empty());
        assert!(store.changes_after(9, 0, 100, usize::MAX).unwrap().is_empty());
    }

    #[test]
    fn damaged_record_fails_whole_load() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), 3).unwrap();
        store.append(&encoded(&[presence(1), presence(3)])).unwrap();
        let transaction = store.database.begin_write().unwrap();
        transaction.open_table(CHANGES).unwrap().insert((3, 2), b"\xc1 not messagepack".as_slice()).unwrap();
        transaction.commit().unwrap();
        drop(store);

        let store = Store::open(directory.path(), 3).unwrap();
        let message = format!("{:#}", store.load().expect_err("a damaged record fails the load"));
        assert!(message.contains("3-2"), "{message}");
        assert!(message.contains(&directory.path().join(STORE_FILE).display().to_string()), "{message}");
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
    }

    #[test]
    fn changed_byte_is_detected() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path(), 3).unwrap();
        store.append(&encoded(&[presence(1), presence(2)])).unwrap();
        let transaction = store.database.begin_write().unwrap();
        {
            let mut table = transaction.open_table(CHANGES).unwrap();
            let mut value = table.get((3, 2)).unwrap().unwrap().value().to_vec();
            // The user name "ana" becomes "anb": still a valid change, with the wrong content.
            let at = value.windows(3).position(|window| window == b"ana").unwrap();
            value[at + 2] = b'b';
            table.insert((3, 2), value.as_slice()).unwrap();
        }
        transaction.commit().unwrap();
        drop(store);

        let store = Store::open(directory.path(), 3).unwrap();
        let message = format!("{:#}", store.load().expect_err("a changed byte fails the load"));
        assert!(message.contains("3-2"), "{message}");
        assert!(message.contains("checksum"), "{message}");
        assert!(message.contains(&directory.path().join(STORE_FILE).display().to_string()), "{message}");
        let message = format!("{:#}", store.changes_after(3, 0, 10, usize::MAX).expect_err("and a fetch"));
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

    #[test]
    fn format_1_store_gets_checksums() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(STORE_FILE);
        {
            let database = Database::create(&path).unwrap();
            let transaction = database.begin_write().unwrap();
            {
                let mut table = transaction.open_table(CHANGES).unwrap();
                for change in [presence(1), presence(2)] {
                    let bytes = encode_change(&change);
                    table.insert((change.id.origin, change.id.seq), bytes.as_slice()).unwrap();
                }
            }
            transaction.commit().unwrap();
        }
        let store = Store::open(directory.path(), 3).unwrap();
        assert_eq!(store.load().unwrap(), vec![presence(1), presence(2)]);
        drop(store);
        let store = Store::open(directory.path(), 3).unwrap();
        assert_eq!(store.load().unwrap(), vec![presence(1), presence(2)], "converted once, read again");
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
