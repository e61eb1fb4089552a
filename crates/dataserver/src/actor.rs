//! The actor: the one task that owns the forum state and the store.
//!
//! It works in groups (group commit). It takes one command, drains up to [`MAX_BATCH`] − 1
//! more that are already queued, applies them all to the state and writes the new changes in
//! one redb transaction. Only after the commit does it send the replies and hand the changes
//! to the publisher. So a write is acknowledged only once it is on disk, and replies to reads
//! in the same group never show a change that is not stored yet. After each commit it
//! publishes its version vector on a watch channel for the heartbeat and the catch-up.

use std::sync::Arc;

use forum_protocol::{now_millis, Change, ChangeId, ErrorCode, Reply, ServerId, VersionVector};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, warn};

use crate::command::{Command, Credentials};
use crate::metrics::{add, Metrics};
use crate::publisher::Publication;
use crate::rate_limit::LogRateLimit;
use crate::state::{reply_for, ForumState};
use crate::store::{EncodedChange, Store};

/// The maximum number of commands handled in one group, and so in one write transaction.
pub(crate) const MAX_BATCH: usize = 256;

/// A reply held back until the group's changes are committed.
enum PendingReply {
    Reply(oneshot::Sender<Reply>, Reply),
    Credentials(oneshot::Sender<Option<Credentials>>, Option<Credentials>),
    /// The acknowledgement of a fetched batch.
    Stored(oneshot::Sender<()>),
    KeptIds(oneshot::Sender<Vec<Option<(ChangeId, Option<ChangeId>)>>>, Vec<Option<(ChangeId, Option<ChangeId>)>>),
}

pub(crate) struct Actor {
    id: ServerId,
    state: ForumState,
    store: Arc<Store>,
    commands: mpsc::Receiver<Command>,
    publications: mpsc::Sender<Publication>,
    /// The version vector after the latest commit.
    vector: watch::Sender<VersionVector>,
    metrics: Arc<Metrics>,
    foreign_id_warnings: LogRateLimit,
}

impl Actor {
    pub fn new(
        id: ServerId,
        state: ForumState,
        store: Arc<Store>,
        commands: mpsc::Receiver<Command>,
        publications: mpsc::Sender<Publication>,
        vector: watch::Sender<VersionVector>,
        metrics: Arc<Metrics>,
    ) -> Self {
        vector.send_replace(state.vector());
        Actor { id, state, store, commands, publications, vector, metrics, foreign_id_warnings: LogRateLimit::new() }
    }

    /// Handles commands until every command sender is dropped, then returns the store so the
    /// caller decides when the file is closed.
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
            if let Err(error) = self.handle_batch(&mut batch).await {
                error!(server = self.id, error = format!("{error:#}"), "the actor stopped because the state could not be reloaded");
                break;
            }
        }
        self.store
    }

    /// Applies a group of commands, commits its changes, then replies and publishes.
    /// Fails only when a commit failed and the state could not be reloaded from the store.
    async fn handle_batch(&mut self, batch: &mut Vec<Command>) -> anyhow::Result<()> {
        let mut replies = Vec::with_capacity(batch.len());
        let mut changes: Vec<Publication> = Vec::new();
        for command in batch.drain(..) {
            match command {
                Command::Write { write, key, reply } => {
                    // A retried write gets the reply of the change it already made, here or
                    // on another server of the group.
                    if let Some(original) = key.and_then(|key| self.state.original_reply(key)) {
                        replies.push(PendingReply::Reply(reply, original));
                        continue;
                    }
                    let id = ChangeId::new(self.id, self.state.next_seq(self.id));
                    let lamport = self.state.next_lamport();
                    let time = now_millis();
                    let answer = match self.state.prepare(write, id, lamport, time) {
                        Ok(Some(kind)) => {
                            let change = Change { id, lamport, time, kind, key };
                            self.state.apply(&change);
                            let answer = reply_for(&change);
                            add(&self.metrics.local_changes, 1);
                            changes.push(Publication::new(change, true));
                            answer
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
                        changes.push(Publication { note, ..Publication::new(change, false) });
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
                            changes.push(Publication { note, ..Publication::new(change, false) });
                        } else {
                            add(&self.metrics.duplicate_changes, 1);
                        }
                    }
                    debug!(server = self.id, received, "applied a fetched batch");
                    replies.push(PendingReply::Stored(stored));
                }
            }
        }

        if !changes.is_empty() {
            match self.commit(&changes).await {
                Ok((first_position, encoded)) => {
                    for ((position, publication), encoded) in (first_position..).zip(changes.iter_mut()).zip(encoded) {
                        publication.position = position;
                        publication.encoded = encoded.wire();
                    }
                }
                Err(error) => {
                    error!(
                        server = self.id,
                        changes = changes.len(),
                        error = format!("{error:#}"),
                        "failed to store a group of changes; replying with an internal error and reloading the state"
                    );
                    for pending in replies {
                        fail(pending);
                    }
                    return self.reload().await;
                }
            }
            add(&self.metrics.commits, 1);
        }

        for pending in replies {
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
        if !changes.is_empty() {
            self.vector.send_replace(self.state.vector());
        }
        for publication in changes {
            // The publisher only queues messages in zeromq's PUB socket, so this waits only
            // when publishing falls behind, and then it throttles writes.
            if self.publications.send(publication).await.is_err() {
                warn!(server = self.id, "the publisher has stopped; a change was stored but not published");
            }
        }
        Ok(())
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

    /// Stores the changes and returns the feed position of the first one, with the changes
    /// as encoded for the store.
    async fn commit(&self, publications: &[Publication]) -> anyhow::Result<(u64, Vec<EncodedChange>)> {
        let encoded: Vec<EncodedChange> =
            publications.iter().map(|publication| EncodedChange::new(&publication.change)).collect();
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.append(&encoded).map(|first| (first, encoded))).await?
    }

    /// Rebuilds the state from the store, dropping the changes of a group that failed to commit.
    async fn reload(&mut self) -> anyhow::Result<()> {
        let store = Arc::clone(&self.store);
        self.state = tokio::task::spawn_blocking(move || ForumState::replayed(&store)).await??;
        self.vector.send_replace(self.state.vector());
        Ok(())
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
