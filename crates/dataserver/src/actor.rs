//! The actor: the one task that owns the forum state, and its committer thread, the one
//! writer of the store.
//!
//! The actor works in groups (group commit). It takes one command, drains up to
//! [`MAX_BATCH`] − 1 more that are already queued, applies them all to the state and hands
//! the group's new changes, replies and version vector to the committer as one job. The
//! committer writes each job's changes in one redb transaction, and only after the commit
//! does it send the job's replies and hand the changes to the publisher. So a write is
//! acknowledged only once it is on disk. Jobs are committed in order, so a read applied after
//! a change gets its reply only after that change's commit, and never shows unstored data.
//!
//! The two overlap: while the committer writes and flushes one transaction, the actor applies
//! the next groups. Up to [`JOB_QUEUE`] jobs wait in the channel, and the committer writes all
//! the jobs that waited in one transaction: the slower the disk, the larger the transactions.
//! So the state can run up to 2 × `JOB_QUEUE` + 2 groups ahead of the store: `JOB_QUEUE` + 1
//! merged in the transaction being written, `JOB_QUEUE` in the channel and one applied group
//! that the actor keeps until the channel has room.
//!
//! When a commit fails, the committer fails that job's replies and every later job applied on
//! top of it, and tells the actor, which reloads the state from the store before it applies
//! anything else. Jobs carry the actor's epoch, the number of reloads so far, so the
//! committer knows which ones were built on a failed group.

use std::sync::Arc;

use forum_protocol::{now_millis, Change, ChangeId, ErrorCode, FeedNote, Reply, ServerId, VersionVector};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, warn};

use crate::command::{Command, Credentials, KeptIds};
use crate::metrics::{add, Metrics};
use crate::publisher::Publication;
use crate::rate_limit::LogRateLimit;
use crate::state::{brief_reply_for, reply_for, ForumState};
use crate::store::{EncodedChange, Store};

/// The maximum number of commands handled in one group, and so in one write transaction.
pub(crate) const MAX_BATCH: usize = 256;

/// Jobs that may wait in the channel to the committer, besides those it is committing.
const JOB_QUEUE: usize = 4;

/// A reply held back until the group's changes are committed.
enum PendingReply {
    Reply(oneshot::Sender<Reply>, Reply),
    Credentials(oneshot::Sender<Option<Credentials>>, Option<Credentials>),
    /// The acknowledgement of a fetched batch.
    Stored(oneshot::Sender<()>),
    KeptIds(oneshot::Sender<KeptIds>, KeptIds),
}

/// One applied group, for the committer.
struct Job {
    /// The actor's epoch when it applied the group.
    epoch: u64,
    changes: Vec<Publication>,
    /// The changes encoded for the store, in the same order. The actor encodes them, so that
    /// the committer, the busier of the two threads, only writes.
    encoded: Vec<EncodedChange>,
    replies: Vec<PendingReply>,
    /// The version vector after the group, published once it is committed; `None` when the
    /// group made no change.
    vector: Option<VersionVector>,
    /// The local changes that got a brief reply, freed by the committer after the
    /// replies. Freed on the actor's thread instead, they left the data server of
    /// `forum-bench --only f` 15 MiB larger (400 against 383 MiB after 1,000,000 posts),
    /// probably because the allocator gave their blocks to the state's next copies. Freeing
    /// them here costs about 1,000 instructions per write instead (docs/benchmarks.md).
    spent: Vec<Change>,
}

impl Job {
    /// Appends a later job of the same epoch to this one.
    fn absorb(&mut self, later: Job) {
        self.changes.extend(later.changes);
        self.encoded.extend(later.encoded);
        self.replies.extend(later.replies);
        self.spent.extend(later.spent);
        if later.vector.is_some() {
            self.vector = later.vector;
        }
    }
}

pub(crate) struct Actor {
    id: ServerId,
    state: ForumState,
    store: Arc<Store>,
    commands: mpsc::Receiver<Command>,
    jobs: mpsc::Sender<Job>,
    /// The epoch of the latest job that failed to commit, as the committer reports it.
    failed_epoch: watch::Receiver<Option<u64>>,
    /// The number of reloads after failed commits; see [`Job::epoch`].
    epoch: u64,
    committer: std::thread::JoinHandle<()>,
    metrics: Arc<Metrics>,
    foreign_id_warnings: LogRateLimit,
}

impl Actor {
    /// Creates the actor and starts its committer thread.
    pub fn new(
        id: ServerId,
        state: ForumState,
        store: Arc<Store>,
        commands: mpsc::Receiver<Command>,
        publications: mpsc::Sender<Publication>,
        vector: watch::Sender<VersionVector>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        vector.send_replace(state.vector());
        let (jobs, job_queue) = mpsc::channel(JOB_QUEUE);
        let (failed_epoch_sender, failed_epoch) = watch::channel(None);
        let committer = Committer {
            id,
            store: Arc::clone(&store),
            jobs: job_queue,
            publications,
            vector,
            failed_epoch: failed_epoch_sender,
            metrics: Arc::clone(&metrics),
        };
        let committer = std::thread::Builder::new()
            .name(format!("committer-{id}"))
            .spawn(move || committer.run())
            .map_err(|error| anyhow::anyhow!("failed to start the committer thread: {error}"))?;
        Ok(Actor {
            id,
            state,
            store,
            commands,
            jobs,
            failed_epoch,
            epoch: 0,
            committer,
            metrics,
            foreign_id_warnings: LogRateLimit::new(),
        })
    }

    /// Handles commands until every command sender is dropped, waits for the committer to
    /// finish the groups it holds, then returns the store so the caller decides when the file
    /// is closed.
    pub async fn run(mut self) -> Arc<Store> {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = self.commands.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.commands.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            if let Err(error) = self.recover_from_failures().await {
                error!(server = self.id, error = format!("{error:#}"), "the actor stopped because the state could not be reloaded");
                break;
            }
            let job = self.apply_batch(&mut batch);
            if self.jobs.send(job).await.is_err() {
                error!(server = self.id, "the committer has stopped; the actor stops too");
                break;
            }
        }
        drop(self.jobs);
        let committer = self.committer;
        if tokio::task::spawn_blocking(move || committer.join()).await.map_or(true, |joined| joined.is_err()) {
            error!(server = self.id, "the committer thread panicked");
        }
        self.store
    }

    /// Reloads the state from the store when a job of the current epoch failed to commit.
    /// Fails only when the state could not be reloaded.
    async fn recover_from_failures(&mut self) -> anyhow::Result<()> {
        // Epochs only grow, so the latest failed epoch is all the actor needs.
        if *self.failed_epoch.borrow() == Some(self.epoch) {
            // The committer fails every job of this epoch, so the store no longer changes
            // under the reload until a job of the next epoch arrives.
            let store = Arc::clone(&self.store);
            self.state = tokio::task::spawn_blocking(move || ForumState::replayed(&store)).await??;
            self.epoch += 1;
        }
        Ok(())
    }

    /// Applies a group of commands to the state and returns the job that commits it.
    fn apply_batch(&mut self, batch: &mut Vec<Command>) -> Job {
        let mut replies = Vec::with_capacity(batch.len());
        let mut changes: Vec<Publication> = Vec::new();
        let mut encoded = Vec::new();
        let mut spent = Vec::new();
        for command in batch.drain(..) {
            match command {
                Command::Write { write, key, brief, reply } => {
                    // A retried write gets the reply of the change it already made, here or
                    // on another server of the group.
                    if let Some(original) = key.and_then(|key| self.state.original_reply(key)) {
                        replies.push(PendingReply::Reply(reply, original));
                        continue;
                    }
                    let requested = if brief { write.requested() } else { None };
                    let id = ChangeId::new(self.id, self.state.next_seq(self.id));
                    let lamport = self.state.next_lamport();
                    let time = now_millis();
                    let answer = match self.state.prepare(write, id, lamport, time) {
                        Ok(Some(kind)) => {
                            let change = Change { id, lamport, time, kind, key };
                            self.state.apply_local(&change);
                            add(&self.metrics.local_changes, 1);
                            changes.push(Publication::new(&change, true, FeedNote::default()));
                            encoded.push(EncodedChange::new(&change));
                            match requested.and_then(|requested| brief_reply_for(&change, &requested)) {
                                Some(brief) => {
                                    spent.push(change);
                                    brief
                                }
                                None => reply_for(change),
                            }
                        }
                        Ok(None) => Reply::Done,
                        Err(rejection) => Reply::Error(rejection),
                    };
                    replies.push(PendingReply::Reply(reply, answer));
                }
                Command::Read { read, reply } => replies.push(PendingReply::Reply(reply, self.state.read(read))),
                Command::KeptIds { keys, reply } => {
                    replies.push(PendingReply::KeptIds(reply, self.state.kept_ids(&keys)));
                }
                Command::Credentials { name, reply } => {
                    replies.push(PendingReply::Credentials(reply, self.state.credentials(&name)));
                }
                Command::Replicated { change } => {
                    self.check_origin(&change);
                    if let Some(note) = self.state.apply_noted(&change) {
                        add(&self.metrics.replicated_changes, 1);
                        changes.push(Publication::new(&change, false, note));
                        encoded.push(EncodedChange::new(&change));
                    } else {
                        add(&self.metrics.duplicate_changes, 1);
                        debug!(server = self.id, change = %change.id, "ignored a change that is already applied");
                    }
                }
                Command::Fetched { changes: fetched, stored } => {
                    let received = fetched.len();
                    for change in fetched {
                        self.check_origin(&change);
                        if let Some(note) = self.state.apply_noted(&change) {
                            add(&self.metrics.fetched_changes, 1);
                            changes.push(Publication::new(&change, false, note));
                            encoded.push(EncodedChange::new(&change));
                        } else {
                            add(&self.metrics.duplicate_changes, 1);
                        }
                    }
                    debug!(server = self.id, received, "applied a fetched batch");
                    replies.push(PendingReply::Stored(stored));
                }
            }
        }
        let vector = (!changes.is_empty()).then(|| self.state.vector());
        Job { epoch: self.epoch, changes, encoded, replies, vector, spent }
    }

    /// Warns when a peer's change carries this server's id but this server never made it: two
    /// servers of the group share an id, or this one lost its store and kept its id.
    fn check_origin(&mut self, change: &Change) {
        if change.id.origin == self.id && !self.state.contains(change.id) {
            if let Some(suppressed) = self.foreign_id_warnings.check() {
                warn!(
                    server = self.id,
                    change = %change.id,
                    suppressed,
                    "a peer sent a change with this server's id that this server never made; two servers of \
                     the group share an id, or this server lost its store: give each server a unique --id"
                );
            }
        }
    }
}

/// The thread that writes the actor's jobs to the store, in order, and then replies and
/// publishes.
struct Committer {
    id: ServerId,
    store: Arc<Store>,
    jobs: mpsc::Receiver<Job>,
    publications: mpsc::Sender<Publication>,
    /// The version vector after the latest commit.
    vector: watch::Sender<VersionVector>,
    /// The epoch of the latest job that failed to commit, read by the actor too.
    failed_epoch: watch::Sender<Option<u64>>,
    metrics: Arc<Metrics>,
}

impl Committer {
    /// Commits the jobs in order. The jobs that queued up during a commit go into the next
    /// transaction together, so the number of transactions follows the disk, not the actor.
    fn run(mut self) {
        while let Some(mut merged) = self.jobs.blocking_recv() {
            while let Ok(next) = self.jobs.try_recv() {
                if next.epoch == merged.epoch {
                    merged.absorb(next);
                } else {
                    self.commit(std::mem::replace(&mut merged, next));
                }
            }
            self.commit(merged);
        }
    }

    fn commit(&mut self, mut job: Job) {
        // A job applied on top of a failed one contains changes and reads that the store will
        // never have: the actor reloads its state and starts a new epoch.
        if *self.failed_epoch.borrow() == Some(job.epoch) {
            job.replies.into_iter().for_each(fail);
            return;
        }
        if !job.changes.is_empty() {
            let encoded = std::mem::take(&mut job.encoded);
            match self.store.append(&encoded) {
                Ok(first_position) => {
                    for ((position, publication), encoded) in (first_position..).zip(job.changes.iter_mut()).zip(encoded) {
                        publication.position = position;
                        publication.encoded = encoded.wire();
                    }
                    add(&self.metrics.commits, 1);
                }
                Err(error) => {
                    error!(
                        server = self.id,
                        changes = job.changes.len(),
                        error = format!("{error:#}"),
                        "failed to store a group of changes; replying with an internal error and reloading the state"
                    );
                    self.failed_epoch.send_replace(Some(job.epoch));
                    job.replies.into_iter().for_each(fail);
                    return;
                }
            }
        }

        // The vector goes out before the replies, so the status that a client reads after its
        // acknowledged write includes that write in the vector.
        if let Some(vector) = job.vector {
            self.vector.send_replace(vector);
        }
        for pending in job.replies {
            match pending {
                PendingReply::Reply(sender, reply) => {
                    let _ = sender.send(reply);
                }
                PendingReply::Credentials(sender, credentials) => {
                    let _ = sender.send(credentials);
                }
                PendingReply::Stored(sender) => {
                    let _ = sender.send(());
                }
                PendingReply::KeptIds(sender, ids) => {
                    let _ = sender.send(ids);
                }
            }
        }
        for publication in job.changes {
            // The publisher only queues messages for the PUB port's subscribers, so this waits only
            // when publishing falls behind, and then it throttles writes.
            if self.publications.blocking_send(publication).is_err() {
                warn!(server = self.id, "the publisher has stopped; a change was stored but not published");
            }
        }
    }
}

/// Sends an internal error in place of a held-back reply after a failed commit.
fn fail(pending: PendingReply) {
    match pending {
        PendingReply::Reply(sender, _) => {
            let _ = sender.send(Reply::error(ErrorCode::Internal, "the data server failed to store the change; retry later"));
        }
        // Dropping the sender makes the login handler reply with an internal error.
        PendingReply::Credentials(sender, _) => drop(sender),
        // Dropping the sender tells the fetcher that the batch was not stored.
        PendingReply::Stored(sender) => drop(sender),
        // Dropping the sender makes the feed reply with an internal error.
        PendingReply::KeptIds(sender, _) => drop(sender),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::command::{Read, Write};

    struct Running {
        commands: mpsc::Sender<Command>,
        store: Arc<Store>,
        task: tokio::task::JoinHandle<Arc<Store>>,
        _publications: mpsc::Receiver<Publication>,
        _directory: tempfile::TempDir,
    }

    fn start() -> Running {
        let directory = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(directory.path(), 1).unwrap());
        let state = ForumState::replayed(&store).unwrap();
        let (commands, command_queue) = mpsc::channel(1024);
        let (publications, publication_queue) = mpsc::channel(1024);
        let (vector, _) = watch::channel(VersionVector::default());
        let actor = Actor::new(1, state, Arc::clone(&store), command_queue, publications, vector, Arc::default()).unwrap();
        let task = tokio::spawn(actor.run());
        Running { commands, store, task, _publications: publication_queue, _directory: directory }
    }

    async fn register(commands: &mpsc::Sender<Command>, name: String) -> (String, Reply) {
        let (reply, answer) = oneshot::channel();
        let write = Write::Register { name: name.clone(), password_hash: "hash".into() };
        commands.send(Command::Write { write, key: None, brief: false, reply }).await.unwrap();
        (name, answer.await.unwrap())
    }

    async fn user_names(commands: &mpsc::Sender<Command>) -> BTreeSet<String> {
        let (reply, answer) = oneshot::channel();
        commands.send(Command::Read { read: Read::ListUsers, reply }).await.unwrap();
        match answer.await.unwrap() {
            Reply::Users(users) => users.into_iter().map(|user| user.name).collect(),
            other => panic!("expected the user list, got {other:?}"),
        }
    }

    fn is_internal_error(reply: &Reply) -> bool {
        matches!(reply, Reply::Error(rejection) if rejection.code == ErrorCode::Internal)
    }

    /// After a failed commit, the state and the store hold exactly the writes that were
    /// acknowledged, even when later groups were applied on top of the failed one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_commit_drops_later_groups() {
        let running = start();
        assert!(matches!(register(&running.commands, "ana".into()).await.1, Reply::User(_)));

        running.store.failing_appends.store(1, Ordering::Release);
        let writers: Vec<_> = (0..200)
            .map(|index| {
                let commands = running.commands.clone();
                tokio::spawn(async move { register(&commands, format!("user{index}")).await })
            })
            .collect();
        let mut acknowledged = BTreeSet::from(["ana".to_owned()]);
        let mut failed = 0;
        for writer in writers {
            let (name, reply) = writer.await.unwrap();
            match reply {
                Reply::User(_) => {
                    acknowledged.insert(name);
                }
                ref other if is_internal_error(other) => failed += 1,
                other => panic!("unexpected reply for {name}: {other:?}"),
            }
        }
        assert!(failed >= 1, "the injected failure failed no write");

        // The next group starts a new epoch on the reloaded state.
        let (name, reply) = register(&running.commands, "dave".into()).await;
        assert!(matches!(reply, Reply::User(_)), "a write after the recovery failed: {reply:?}");
        acknowledged.insert(name);
        assert_eq!(user_names(&running.commands).await, acknowledged, "the state after the recovery");

        let Running { commands, task, .. } = running;
        drop(commands);
        let store = task.await.unwrap();
        let stored: BTreeSet<String> = match ForumState::replayed(&store).unwrap().read(Read::ListUsers) {
            Reply::Users(users) => users.into_iter().map(|user| user.name).collect(),
            other => panic!("expected the user list, got {other:?}"),
        };
        assert_eq!(stored, acknowledged, "the store holds exactly the acknowledged writes");
        let seqs: Vec<u64> = store.load().unwrap().iter().map(|change| change.id.seq).collect();
        let expected: Vec<u64> = (1..=acknowledged.len() as u64).collect();
        assert_eq!(seqs, expected, "the stored changes of this server have no gap in their sequence numbers");
    }
}
