//! The change log on disk: a redb table of every applied change, keyed by (origin, seq).
//!
//! Every method blocks on file I/O, so async callers run them in `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use forum_protocol::{decode, encode, Change, ServerId, WireChange, PROTOCOL_VERSION};
use redb::{Database, ReadableTable, TableDefinition};

use crate::feed;

/// The file name of the store inside the data directory.
pub const STORE_FILE: &str = "forum.redb";

/// The memory redb may use to cache pages of the store. redb 2 caches up to 1 GiB by default,
/// which a restart fills while replaying the store. The forum state is in memory anyway, so
/// the store needs little cache: writes append at the end, and reads are replays and catch-up
/// fetches that the operating system's page cache serves as well.
const STORE_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Changes by (origin server id, sequence number); values are encoded [`WireChange`]s.
pub(crate) const CHANGES: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("changes");

/// An open change log. Dropping it closes the file.
pub(crate) struct Store {
    database: Database,
    path: PathBuf,
    /// The feed position that the next stored change gets.
    next_position: AtomicU64,
}

impl Store {
    /// Opens `forum.redb` in `data_dir`, creating the directory and the file when missing.
    pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("failed to create the data directory {}", data_dir.display()))?;
        let path = data_dir.join(STORE_FILE);
        let database = Database::builder().set_cache_size(STORE_CACHE_BYTES).create(&path).map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen => anyhow::anyhow!(
                "the change store {} is already open in another data server process; stop that \
                 process or choose another data directory",
                path.display()
            ),
            error => anyhow::Error::new(error).context(format!(
                "failed to open the change store {}; if it is damaged, move it away to start empty",
                path.display()
            )),
        })?;

        // Creating the table up front lets `load` read an empty store without a special case.
        let transaction = database.begin_write().with_context(|| format!("failed to write to {}", path.display()))?;
        transaction.open_table(CHANGES).with_context(|| format!("failed to open the changes table in {}", path.display()))?;
        transaction.commit().with_context(|| format!("failed to commit to {}", path.display()))?;
        let last_position = feed::open(&database).with_context(|| format!("failed to open the feed in {}", path.display()))?;

        Ok(Store { database, path, next_position: AtomicU64::new(last_position + 1) })
    }

    /// Returns the database, for the feed's reads.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Returns the path of the store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every stored change, ordered by (origin, seq).
    pub fn load(&self) -> anyhow::Result<Vec<Change>> {
        let path = self.path.display();
        let transaction = self.database.begin_read().with_context(|| format!("failed to read {path}"))?;
        let table = transaction.open_table(CHANGES).with_context(|| format!("failed to open the changes table in {path}"))?;
        let mut changes = Vec::new();
        for entry in table.iter().with_context(|| format!("failed to read the changes table in {path}"))? {
            let (key, value) = entry.with_context(|| format!("failed to read a change from {path}"))?;
            let (origin, seq) = key.value();
            let wire: WireChange = decode(value.value())
                .with_context(|| format!("the stored change {origin}-{seq} in {path} cannot be decoded"))?;
            changes.push(wire.change);
        }
        Ok(changes)
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
            let wire: WireChange = decode(value.value())
                .with_context(|| format!("the stored change {origin}-{seq} in {path} cannot be decoded"))?;
            changes.push(wire.change);
        }
        Ok(changes)
    }

    /// Stores changes in one write transaction, with their feed positions, and returns once
    /// it is committed to disk. Returns the feed position of the first change; the others
    /// follow it in order. Only the actor calls it, so appends never overlap.
    pub fn append(&self, changes: &[Change]) -> anyhow::Result<u64> {
        let path = self.path.display();
        let first_position = self.next_position.load(Ordering::Acquire);
        let transaction = self.database.begin_write().with_context(|| format!("failed to write to {path}"))?;
        {
            let mut table =
                transaction.open_table(CHANGES).with_context(|| format!("failed to open the changes table in {path}"))?;
            for change in changes {
                let bytes = encode(&WireChange { v: PROTOCOL_VERSION, change: change.clone() });
                table
                    .insert((change.id.origin, change.id.seq), bytes.as_slice())
                    .with_context(|| format!("failed to store change {} in {path}", change.id))?;
            }
        }
        feed::record(&transaction, first_position, changes).with_context(|| format!("failed to write the feed in {path}"))?;
        transaction.commit().with_context(|| format!("failed to commit {} changes to {path}", changes.len()))?;
        self.next_position.store(first_position + changes.len() as u64, Ordering::Release);
        Ok(first_position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forum_protocol::{ChangeId, ChangeKind};

    fn presence(seq: u64) -> Change {
        let kind = ChangeKind::PresenceChanged { user: "ana".into(), webserver: "w1".into(), online: seq % 2 == 1 };
        Change { id: ChangeId::new(3, seq), lamport: seq, time: 0, kind, key: None }
    }

    #[test]
    fn store_keeps_changes_across_reopen() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path()).unwrap();
        assert!(store.load().unwrap().is_empty());
        store.append(&[presence(2), presence(1)]).unwrap();
        drop(store);

        let store = Store::open(directory.path()).unwrap();
        assert_eq!(store.load().unwrap(), vec![presence(1), presence(2)]);
    }

    #[test]
    fn changes_after_reads_one_origin_in_order() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path()).unwrap();
        let mut other = presence(1);
        other.id = ChangeId::new(4, 1);
        store.append(&[presence(3), presence(1), presence(2), presence(4), other]).unwrap();

        let ids = |changes: Vec<Change>| changes.into_iter().map(|change| change.id.seq).collect::<Vec<_>>();
        assert_eq!(ids(store.changes_after(3, 1, 2, usize::MAX).unwrap()), [2, 3]);
        assert_eq!(ids(store.changes_after(3, 0, 100, 1).unwrap()), [1], "the byte limit still returns one change");
        assert!(store.changes_after(3, 4, 100, usize::MAX).unwrap().is_empty());
        assert!(store.changes_after(9, 0, 100, usize::MAX).unwrap().is_empty());
    }

    #[test]
    fn damaged_record_fails_whole_load() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path()).unwrap();
        store.append(&[presence(1), presence(3)]).unwrap();
        let transaction = store.database.begin_write().unwrap();
        transaction.open_table(CHANGES).unwrap().insert((3, 2), b"\xc1 not messagepack".as_slice()).unwrap();
        transaction.commit().unwrap();
        drop(store);

        let store = Store::open(directory.path()).unwrap();
        let message = format!("{:#}", store.load().expect_err("a damaged record fails the load"));
        assert!(message.contains("3-2"), "{message}");
        assert!(message.contains(&directory.path().join(STORE_FILE).display().to_string()), "{message}");
    }

    #[test]
    fn feed_positions_survive_reopen() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path()).unwrap();
        assert_eq!(store.append(&[presence(2), presence(1)]).unwrap(), 1);
        drop(store);

        let store = Store::open(directory.path()).unwrap();
        assert_eq!(store.append(&[presence(3)]).unwrap(), 3);
        let (entries, last) = feed::read_after(store.database(), 1, 10).unwrap();
        assert_eq!(last, 3);
        let read: Vec<(u64, u64)> = entries.iter().map(|entry| (entry.position, entry.change.id.seq)).collect();
        assert_eq!(read, [(2, 1), (3, 3)], "positions follow the order of storing, not of ids");
        assert_eq!(feed::read_after(store.database(), 0, 1).unwrap().0.len(), 1, "the limit is kept");
    }

    #[test]
    fn damaged_store_error_names_path() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join(STORE_FILE), b"not a redb file, just some bytes".repeat(200)).unwrap();
        let error = Store::open(directory.path()).err().expect("a damaged file is rejected");
        let message = format!("{error:#}");
        assert!(message.contains(STORE_FILE), "{message}");
        assert!(message.contains(&directory.path().display().to_string()), "{message}");
    }
}
