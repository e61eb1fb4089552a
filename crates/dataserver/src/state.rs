//! The forum state in memory: what the stored changes add up to.
//!
//! [`ForumState::apply`] gives the same state for the same set of changes in any order, because
//! every conflict is decided by the order key (lamport, origin, seq), which is the same on
//! every replica. That is what lets replicas apply peers' changes as they arrive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use forum_protocol::{
    fold, folded, now_millis, Change, ChangeId, ChangeKind, FeedNote, ErrorCode, ErrorReply, IdempotencyKey, Message, Page, PrivateMessage,
    Reply, ServerId, Stored, Subject, User, UserStatus, VersionVector, MAX_REPLY_BYTES,
};
use rustc_hash::FxHashMap;

use crate::command::{Credentials, PageRequest, Read, Requested, Write};
use crate::idempotency::{Admission, Kept, PostRef, Writes};
use crate::leases::Leases;
use crate::paging::{newest_before, LamportIndex, OrderKey};
use crate::sessions::SessionTable;
use crate::store::Store;
use crate::version_vector::VersionTracker;

fn order_key(change: &Change) -> OrderKey {
    (change.lamport, change.id.origin, change.id.seq)
}

/// An upper bound of the encoded size of one message besides its text and names, in bytes.
/// The field names, two ids, two times and the headers of the map and strings take at most
/// 124 bytes, with ids of the largest origin and sequence number.
const MESSAGE_OVERHEAD_BYTES: usize = 128;

/// Rejects a request for a whole conversation when its reply could be larger than
/// `max_bytes`, as [`ForumState::check_history_size`] does for a subject.
fn check_conversation_size(conversation: Option<&BTreeMap<OrderKey, PrivateMessage>>, max_bytes: usize) -> Result<(), ErrorReply> {
    let mut bytes = 0;
    for message in conversation.into_iter().flat_map(BTreeMap::values) {
        bytes += MESSAGE_OVERHEAD_BYTES + message.text.len() + message.from.len() + message.to.len();
        if bytes > max_bytes {
            let message = format!("the conversation is larger than one reply may be ({max_bytes} bytes); request it in pages with a limit");
            return Err(error(ErrorCode::InvalidInput, message));
        }
    }
    Ok(())
}

/// Returns the key of the conversation between two users: both folded names, smaller first.
fn conversation_key(first: &str, second: &str) -> (String, String) {
    let (first, second) = (fold(first), fold(second));
    if first <= second {
        (first, second)
    } else {
        (second, first)
    }
}

/// Builds the reply to the local write that made `change`, taking the change's own strings.
pub(crate) fn reply_for(change: Change) -> Reply {
    match change.kind {
        ChangeKind::UserRegistered { user, .. } => Reply::User(user),
        ChangeKind::SubjectCreated { subject } => Reply::Subject(subject),
        ChangeKind::MessagePosted { message } => Reply::Message(message),
        ChangeKind::PrivateSent { message } => Reply::PrivateMessage(message),
        ChangeKind::PresenceChanged { .. }
        | ChangeKind::SessionCreated { .. }
        | ChangeKind::SessionRevoked { .. }
        | ChangeKind::PresenceLease { .. } => Reply::Done,
    }
}

/// Builds the brief reply to the local write that made `change`: the id and times of the
/// message it stored, and the subject and names only where they differ from `requested`.
/// Returns `None` when the change stored no message.
pub(crate) fn brief_reply_for(change: &Change, requested: &Requested) -> Option<Reply> {
    let differs = |stored: &str, requested: &str| (stored != requested).then(|| Box::from(stored));
    let stored = match &change.kind {
        ChangeKind::MessagePosted { message } => Stored {
            id: message.id,
            time: message.time,
            lamport: message.lamport,
            subject: Some(message.subject).filter(|&subject| Some(subject) != requested.subject),
            author: differs(&message.author, &requested.author),
            to: None,
        },
        ChangeKind::PrivateSent { message } => Stored {
            id: message.id,
            time: message.time,
            lamport: message.lamport,
            subject: None,
            author: differs(&message.from, &requested.author),
            to: requested.to.as_deref().and_then(|to| differs(&message.to, to)),
        },
        _ => return None,
    };
    Some(Reply::Stored(stored))
}

fn error(code: ErrorCode, message: String) -> ErrorReply {
    ErrorReply { code, message }
}

struct UserEntry {
    user: User,
    password_hash: String,
    key: OrderKey,
}

/// A public message as the state keeps it: 32 bytes and its text. Its id and Lamport time are
/// in its order key, its subject in the map that contains it, and its author's name in
/// [`ForumState::authors`], so [`ForumState::message`] rebuilds the full [`Message`].
struct Post {
    text: Box<str>,
    time: u64,
    author: u32,
}

struct SubjectEntry {
    subject: Subject,
    key: OrderKey,
    /// The title as [`fold`] makes it, the key of `titles`, kept so that looking up a
    /// subject for each post allocates nothing.
    folded_title: String,
}

/// Users, subjects, messages and presence, plus the bookkeeping that makes applying idempotent.
#[derive(Default)]
pub(crate) struct ForumState {
    /// The number of changes applied.
    applied: usize,
    /// The greatest Lamport timestamp of any applied change.
    max_lamport: u64,
    /// The greatest sequence number applied, per origin server.
    max_seq: FxHashMap<ServerId, u64>,
    /// The applied changes of each origin, as a contiguous prefix and a set beyond a gap.
    versions: VersionTracker,
    /// Every registration of each folded name, sorted by order key: the first one won the
    /// name, the others lost it to a concurrent registration on another server.
    users: HashMap<String, Vec<UserEntry>>,
    /// Every subject ever created, by id, including those that lost a title conflict.
    subjects: FxHashMap<ChangeId, SubjectEntry>,
    /// The subjects of each folded title by order key. The first one won the title, and the
    /// others are merged into it: their ids resolve to it and their messages show in its history.
    titles: HashMap<String, BTreeMap<OrderKey, ChangeId>>,
    /// Public messages per subject id. A subject's messages may arrive before the subject.
    messages: FxHashMap<ChangeId, BTreeMap<OrderKey, Post>>,
    /// The author names of posts, each stored once; a post stores its author's index here.
    authors: Vec<Arc<str>>,
    /// The index of each name in `authors`.
    author_indexes: HashMap<Arc<str>, u32>,
    /// Private messages per unordered pair of folded user names.
    conversations: HashMap<(String, String), BTreeMap<OrderKey, PrivateMessage>>,
    /// The subject of each public message withdrawn as the losing copy of a retried write,
    /// so that a page cursor that names it still ends a page of that subject.
    withdrawn_posts: FxHashMap<ChangeId, ChangeId>,
    /// The conversation of each withdrawn private message, for the same reason.
    withdrawn_private: FxHashMap<ChangeId, (String, String)>,
    /// The Lamport time of every public and private message, which turns a paging cursor
    /// into its order key. Withdrawn messages stay in it.
    message_lamports: LamportIndex,
    /// The latest presence change per (folded user name, web server), and whether it is online.
    presence: HashMap<(String, String), (OrderKey, bool)>,
    /// The kept change of every idempotency key, for retried writes.
    writes: Writes,
    sessions: SessionTable,
    /// Presence leases. A web server that has one reports its online users through it, and
    /// its entries in `presence` only drive the `presence` events.
    leases: Leases,
}

impl ForumState {
    /// Builds the state from stored changes, in any order.
    #[cfg(test)]
    pub fn from_changes(changes: impl IntoIterator<Item = Change>) -> Self {
        let mut state = Self::default();
        for change in changes {
            state.apply(&change);
        }
        state
    }

    /// Builds the state from every change in `store`, then hands the memory that the replay
    /// used for decoding back to the operating system.
    pub fn replayed(store: &Store) -> anyhow::Result<Self> {
        let mut state = Self::default();
        store.replay(|change| {
            state.apply(&change);
        })?;
        crate::memory::release_free_memory();
        Ok(state)
    }

    /// Returns the number of changes applied.
    pub fn change_count(&self) -> usize {
        self.applied
    }

    /// Returns the Lamport timestamp for the next local change.
    pub fn next_lamport(&self) -> u64 {
        self.max_lamport + 1
    }

    /// Returns the sequence number for the next change from `origin`, starting at 1.
    pub fn next_seq(&self, origin: ServerId) -> u64 {
        self.max_seq.get(&origin).copied().unwrap_or(0) + 1
    }

    /// Returns, per origin, the highest sequence number up to which every change is applied.
    pub fn vector(&self) -> VersionVector {
        self.versions.vector()
    }

    /// Returns whether a change with this id has been applied.
    pub fn contains(&self, id: ChangeId) -> bool {
        self.versions.contains(id)
    }

    /// Returns the reply to the write that was applied with an idempotency key, when there
    /// was one, for replying to a retry of it.
    pub fn original_reply(&self, key: IdempotencyKey) -> Option<Reply> {
        Some(match self.writes.original(key)? {
            Kept::Post(kept) => match self.messages.get(&kept.subject()).and_then(|posts| posts.get(&kept.order())) {
                Some(post) => Reply::Message(self.message(post, kept.order(), kept.subject())),
                // The kept post is the one that won its key, and only losers are withdrawn.
                None => Reply::error(ErrorCode::Internal, "the original of this retried write is missing"),
            },
            Kept::Whole(change) => reply_for(change.clone()),
        })
    }

    /// Applies a change and returns true, or returns false when it was already applied.
    pub fn apply(&mut self, change: &Change) -> bool {
        self.apply_noted(change).is_some()
    }

    /// Applies a change that this server has just made for a write whose idempotency key, if
    /// any, [`ForumState::original_reply`] found unused, so the key is not looked up again.
    pub fn apply_local(&mut self, change: &Change) {
        self.apply_admitted(change, true);
    }

    /// Applies a change and returns what pages are shown of it, or returns `None` when it was
    /// already applied. Only a second copy of a write (same idempotency key) gets a note.
    pub fn apply_noted(&mut self, change: &Change) -> Option<FeedNote> {
        self.apply_admitted(change, false)
    }

    /// Applies a change as [`ForumState::apply_noted`] does. `key_is_new` is true when the
    /// caller knows the change's idempotency key to be unused.
    fn apply_admitted(&mut self, change: &Change, key_is_new: bool) -> Option<FeedNote> {
        if !self.versions.record(change.id) {
            return None;
        }
        self.applied += 1;
        self.max_lamport = self.max_lamport.max(change.lamport);
        let max_seq = self.max_seq.entry(change.id.origin).or_default();
        *max_seq = (*max_seq).max(change.id.seq);
        let mut note = FeedNote::default();
        match self.writes.admit(change, key_is_new) {
            Admission::Apply => {}
            Admission::Skip => return Some(FeedNote { hidden: true, replaces: None }),
            Admission::ReplacePost(duplicate) => {
                note.replaces = Some(duplicate.id());
                self.withdraw_post(duplicate);
            }
            Admission::Replace(duplicate) => {
                note.replaces = Some(duplicate.id);
                self.withdraw(&duplicate);
            }
        }

        let key = order_key(change);
        match &change.kind {
            ChangeKind::UserRegistered { user, password_hash } => {
                // NOTE: a session opened by the losing account before its loss reached the web
                // server keeps acting under the shared name, so its later writes show as the
                // winner's. Messages are stored by name, not by account id.
                let entries = self.users.entry(fold(&user.name)).or_default();
                let position = entries.partition_point(|entry| entry.key < key);
                let entry = UserEntry { user: user.clone(), password_hash: password_hash.clone(), key };
                entries.insert(position, entry);
            }
            ChangeKind::SubjectCreated { subject } => {
                let folded_title = fold(&subject.title);
                self.titles.entry(folded_title.clone()).or_default().insert(key, subject.id);
                self.subjects.insert(subject.id, SubjectEntry { subject: subject.clone(), key, folded_title });
            }
            ChangeKind::MessagePosted { message } => {
                // NOTE: a message's id and Lamport time are those of its change (the origin
                // stamps both), so the order key stores them once for both.
                let author = self.author_index(&message.author);
                let post = Post { author, text: message.text.as_str().into(), time: message.time };
                self.messages.entry(message.subject).or_default().insert(key, post);
                self.message_lamports.insert(change.id, change.lamport);
            }
            ChangeKind::PrivateSent { message } => {
                self.message_lamports.insert(change.id, change.lamport);
                let conversation = conversation_key(&message.from, &message.to);
                self.conversations.entry(conversation).or_default().insert(key, message.clone());
            }
            ChangeKind::PresenceChanged { user, webserver, online } => {
                let slot = (fold(user), webserver.clone());
                let newer = self.presence.get(&slot).is_none_or(|(latest_key, _)| key > *latest_key);
                if newer {
                    self.presence.insert(slot, (key, *online));
                }
            }
            ChangeKind::SessionCreated { .. } | ChangeKind::SessionRevoked { .. } => self.sessions.apply(change),
            ChangeKind::PresenceLease { .. } => self.leases.apply(change, fold),
        }
        Some(note)
    }

    /// Returns, for each idempotency key, the id of the change it kept and of the message that
    /// one replaced, for the feed notes of a replay. A keyed message whose key kept another
    /// change is hidden, and the kept one withdraws the message it replaced.
    pub fn kept_ids(&self, keys: &[IdempotencyKey]) -> Vec<Option<(ChangeId, Option<ChangeId>)>> {
        keys.iter()
            .map(|key| {
                let kept = self.writes.original(*key).map(|kept| match kept {
                    Kept::Post(post) => post.id(),
                    Kept::Whole(change) => change.id,
                })?;
                Some((kept, self.writes.replaced(*key)))
            })
            .collect()
    }

    /// Returns the index of an author's name in `authors`, adding it when new.
    fn author_index(&mut self, name: &str) -> u32 {
        if let Some(index) = self.author_indexes.get(name) {
            return *index;
        }
        let index = u32::try_from(self.authors.len()).expect("fewer than 2^32 authors");
        let name: Arc<str> = Arc::from(name);
        self.authors.push(Arc::clone(&name));
        self.author_indexes.insert(name, index);
        index
    }

    /// Rebuilds the full message of a post with this order key, showing `subject` as its subject.
    fn message(&self, post: &Post, key: OrderKey, subject: ChangeId) -> Message {
        let (lamport, origin, seq) = key;
        let author = self.authors[post.author as usize].to_string();
        Message { id: ChangeId::new(origin, seq), subject, author, text: post.text.to_string(), time: post.time, lamport }
    }

    /// Removes a public message that lost to a duplicate with the same idempotency key.
    fn withdraw_post(&mut self, duplicate: PostRef) {
        self.withdrawn_posts.insert(duplicate.id(), duplicate.subject());
        if let Some(messages) = self.messages.get_mut(&duplicate.subject()) {
            messages.remove(&duplicate.order());
        }
    }

    /// Removes the message of a change that lost to a duplicate with the same idempotency key.
    fn withdraw(&mut self, duplicate: &Change) {
        let key = order_key(duplicate);
        match &duplicate.kind {
            ChangeKind::PrivateSent { message } => {
                let place = conversation_key(&message.from, &message.to);
                if let Some(conversation) = self.conversations.get_mut(&place) {
                    conversation.remove(&key);
                }
                self.withdrawn_private.insert(message.id, place);
            }
            _ => {}
        }
    }

    /// Checks a local write against the state and returns what the change will do, or `None`
    /// when the write changes nothing (presence that is already as requested).
    ///
    /// `id`, `lamport` and `time` are the stamp of the change the caller will create.
    pub fn prepare(&self, write: Write, id: ChangeId, lamport: u64, time: u64) -> Result<Option<ChangeKind>, ErrorReply> {
        let kind = match write {
            Write::Register { name, password_hash } => {
                if self.users.get(folded(&name).as_ref()).is_some_and(|entries| !entries.is_empty()) {
                    return Err(error(ErrorCode::NameTaken, format!("the user name {name:?} is taken")));
                }
                ChangeKind::UserRegistered { user: User { id, name, time }, password_hash }
            }
            Write::CreateSubject { title, created_by } => {
                let creator = self.user(&created_by)?;
                let title = title.trim().to_owned();
                if let Some(existing) = self.titles.get(folded(&title).as_ref()).and_then(|subjects| subjects.values().next()) {
                    let message = format!("a subject titled {title:?} already exists with id {existing}");
                    return Err(error(ErrorCode::TitleTaken, message));
                }
                let subject = Subject { id, title, created_by: creator.name.clone(), time };
                ChangeKind::SubjectCreated { subject }
            }
            Write::PostMessage { subject, author, text } => {
                // A post to a subject that lost its title goes to the winner it merged into.
                let subject = self.subject(subject)?.id;
                let author = self.stored_name(author)?;
                ChangeKind::MessagePosted { message: Message { id, subject, author, text, time, lamport } }
            }
            Write::SendPrivate { from, to, text } => {
                let from = self.stored_name(from)?;
                let to = self.stored_name(to)?;
                ChangeKind::PrivateSent { message: PrivateMessage { id, from, to, text, time, lamport } }
            }
            Write::SetPresence { user, webserver, online } => {
                let user = self.user(&user)?.name.clone();
                let slot = (fold(&user), webserver);
                let current = self.presence.get(&slot).is_some_and(|(_, online)| *online);
                if current == online {
                    return Ok(None);
                }
                ChangeKind::PresenceChanged { user, webserver: slot.1, online }
            }
            Write::CreateSession { token_hash, user, expires_at } => {
                let user = self.user(&user)?.name.clone();
                if self.sessions.exists(&token_hash) {
                    return Ok(None);
                }
                ChangeKind::SessionCreated { token_hash, user, expires_at }
            }
            Write::RevokeSession { token_hash } => {
                if !self.sessions.exists(&token_hash) || self.sessions.is_revoked(&token_hash) {
                    return Ok(None);
                }
                ChangeKind::SessionRevoked { token_hash }
            }
            Write::RenewPresence { webserver, instance, users, expires_at } => {
                // Users unknown here (not replicated yet, or never registered) are left out
                // until a later renewal.
                let users = users.iter().filter_map(|user| self.user(user).ok()).map(|user| user.name.clone()).collect();
                ChangeKind::PresenceLease { webserver, instance, users, expires_at }
            }
        };
        Ok(Some(kind))
    }

    /// Returns the reply to a query.
    pub fn read(&self, read: Read) -> Reply {
        let result = match read {
            Read::ListSubjects => Ok(Reply::Subjects(self.list_subjects())),
            Read::History { subject, page: None } => self
                .subject(subject)
                .and_then(|winner| self.check_history_size(winner, MAX_REPLY_BYTES).map(|()| Reply::Messages(self.history(winner)))),
            Read::History { subject, page: Some(page) } => {
                self.subject(subject).and_then(|winner| self.history_page(winner, page)).map(Reply::MessagePage)
            }
            Read::PrivateHistory { user, other, page } => self.user(&user).and_then(|_| self.user(&other)).and_then(|_| {
                let conversation = self.conversations.get(&conversation_key(&user, &other));
                match page {
                    None => {
                        check_conversation_size(conversation, MAX_REPLY_BYTES)?;
                        let messages = conversation.map(|messages| messages.values().cloned().collect()).unwrap_or_default();
                        Ok(Reply::PrivateMessages(messages))
                    }
                    Some(page) => self.conversation_page(conversation, page, &user, &other).map(Reply::PrivatePage),
                }
            }),
            Read::ListUsers => Ok(Reply::Users(self.list_users())),
            Read::Session { token_hash } => match self.sessions.valid(&token_hash, now_millis()) {
                Some((user, expires_at)) => Ok(Reply::Session { user: user.to_owned(), expires_at }),
                None => Err(error(ErrorCode::UnknownSession, "the session does not exist, was revoked or has expired".into())),
            },
        };
        result.unwrap_or_else(Reply::Error)
    }

    /// Returns the user who won a name, with their password hash and the hashes of the
    /// accounts that lost the name, looked up by name ignoring case.
    pub fn credentials(&self, name: &str) -> Option<Credentials> {
        let (winner, losers) = self.users.get(folded(name).as_ref())?.split_first()?;
        Some(Credentials {
            user: winner.user.clone(),
            password_hash: winner.password_hash.clone(),
            lost_name_hashes: losers.iter().map(|entry| entry.password_hash.clone()).collect(),
        })
    }

    fn user(&self, name: &str) -> Result<&User, ErrorReply> {
        match self.users.get(folded(name).as_ref()).and_then(|entries| entries.first()) {
            Some(entry) => Ok(&entry.user),
            None => Err(error(ErrorCode::UnknownUser, format!("no user is named {name:?}"))),
        }
    }

    /// Returns the name of the user named `name` ignoring case, as it was registered. Reuses
    /// `name` when it is spelled the same, as it is in most requests.
    fn stored_name(&self, name: String) -> Result<String, ErrorReply> {
        let user = self.user(&name)?;
        Ok(if user.name == name { name } else { user.name.clone() })
    }

    /// Returns the subject with this id, or the subject it merged into when it lost its title.
    fn subject(&self, id: ChangeId) -> Result<&Subject, ErrorReply> {
        let Some(entry) = self.subjects.get(&id) else {
            return Err(error(ErrorCode::UnknownSubject, format!("no subject has id {id}")));
        };
        let winner = self.titles.get(&entry.folded_title).and_then(|subjects| subjects.values().next());
        Ok(winner.map_or(&entry.subject, |winner| &self.subjects[winner].subject))
    }

    /// Returns the messages of a winning subject and of every subject merged into it, in
    /// history order, each showing the winner's id as its subject.
    fn history(&self, winner: &Subject) -> Vec<Message> {
        let ids = self.merged_ids(winner);
        let mut history: BTreeMap<OrderKey, Message> = BTreeMap::new();
        for id in ids {
            if let Some(messages) = self.messages.get(&id) {
                history.extend(messages.iter().map(|(key, post)| (*key, self.message(post, *key, winner.id))));
            }
        }
        history.into_values().collect()
    }

    /// Rejects a request for the whole history of a winning subject when its reply could
    /// be larger than `max_bytes`. For a subject of a million 140-byte posts, building that
    /// reply grew the data server by about 700 MiB, and no web server accepts it.
    fn check_history_size(&self, winner: &Subject, max_bytes: usize) -> Result<(), ErrorReply> {
        let mut bytes = 0;
        for id in self.merged_ids(winner) {
            for post in self.messages.get(&id).into_iter().flat_map(BTreeMap::values) {
                bytes += MESSAGE_OVERHEAD_BYTES + post.text.len() + self.authors[post.author as usize].len();
                if bytes > max_bytes {
                    let message = format!(
                        "the history of subject {} is larger than one reply may be ({max_bytes} bytes); request it in pages with a limit",
                        winner.id
                    );
                    return Err(error(ErrorCode::InvalidInput, message));
                }
            }
        }
        Ok(())
    }

    /// Returns the ids of a winning subject and of every subject merged into it.
    fn merged_ids(&self, winner: &Subject) -> Vec<ChangeId> {
        let merged = self.titles.get(folded(&winner.title).as_ref()).map(|subjects| subjects.values().copied().collect());
        merged.unwrap_or_else(|| vec![winner.id])
    }

    /// Returns one page of the history of a winning subject and of every subject merged
    /// into it, as [`ForumState::history`] orders and shows it.
    fn history_page(&self, winner: &Subject, page: PageRequest) -> Result<Page<Message>, ErrorReply> {
        let merged = self.merged_ids(winner);
        let histories: Vec<&BTreeMap<OrderKey, Post>> = merged.iter().filter_map(|id| self.messages.get(id)).collect();
        let before = match page.before {
            None => None,
            Some(id) => {
                // A withdrawn copy is no longer in the history, but its place there still ends a page.
                let withdrawn_here = self.withdrawn_posts.get(&id).is_some_and(|subject| merged.contains(subject));
                let key = self
                    .message_lamports
                    .order_key(id)
                    .filter(|key| withdrawn_here || histories.iter().any(|posts| posts.contains_key(key)));
                let message = format!("no message with id {id} is in the subject {}", winner.id);
                Some(key.ok_or_else(|| error(ErrorCode::UnknownMessage, message))?)
            }
        };
        let (posts, more) = newest_before(histories, before, page.limit);
        let messages = posts.into_iter().map(|(key, post)| self.message(post, key, winner.id)).collect();
        Ok(Page { messages, more })
    }

    /// Returns one page of a conversation, which is `None` when the two users have exchanged
    /// no message yet.
    fn conversation_page(
        &self,
        conversation: Option<&BTreeMap<OrderKey, PrivateMessage>>,
        page: PageRequest,
        user: &str,
        other: &str,
    ) -> Result<Page<PrivateMessage>, ErrorReply> {
        let before = match page.before {
            None => None,
            Some(id) => {
                let withdrawn_here = self.withdrawn_private.get(&id).is_some_and(|place| *place == conversation_key(user, other));
                let key = self
                    .message_lamports
                    .order_key(id)
                    .filter(|key| withdrawn_here || conversation.is_some_and(|messages| messages.contains_key(key)));
                let message = format!("no message with id {id} is in the conversation of {user:?} and {other:?}");
                Some(key.ok_or_else(|| error(ErrorCode::UnknownMessage, message))?)
            }
        };
        let (messages, more) = newest_before(conversation, before, page.limit);
        Ok(Page { messages: messages.into_iter().map(|(_, message)| message.clone()).collect(), more })
    }

    /// Lists the subjects that won their title, oldest first.
    fn list_subjects(&self) -> Vec<Subject> {
        // A subject that lost a title conflict is left out, but its id still resolves to the
        // winner for History and PostMessage.
        let mut winners: Vec<&SubjectEntry> =
            self.titles.values().filter_map(|subjects| subjects.values().next()).map(|id| &self.subjects[id]).collect();
        winners.sort_by_key(|entry| entry.key);
        winners.into_iter().map(|entry| entry.subject.clone()).collect()
    }

    /// Lists every user with their online flag, sorted by name ignoring case.
    fn list_users(&self) -> Vec<UserStatus> {
        let mut online: HashSet<&str> = self
            .presence
            .iter()
            .filter(|((_, webserver), (_, online))| *online && !self.leases.has_lease(webserver))
            .map(|((user, _), _)| user.as_str())
            .collect();
        online.extend(self.leases.online_users(now_millis()));
        let mut users: Vec<(&String, &UserEntry)> =
            self.users.iter().filter_map(|(folded, entries)| Some((folded, entries.first()?))).collect();
        users.sort_by_key(|(folded, _)| *folded);
        users
            .into_iter()
            .map(|(folded, entry)| UserStatus { name: entry.user.name.clone(), online: online.contains(folded.as_str()) })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(origin: ServerId, seq: u64, lamport: u64, kind: ChangeKind) -> Change {
        Change { id: ChangeId::new(origin, seq), lamport, time: 0, kind, key: None }
    }

    fn registered(origin: ServerId, seq: u64, lamport: u64, name: &str, hash: &str) -> Change {
        let user = User { id: ChangeId::new(origin, seq), name: name.into(), time: 0 };
        change(origin, seq, lamport, ChangeKind::UserRegistered { user, password_hash: hash.into() })
    }

    fn subject(origin: ServerId, seq: u64, lamport: u64, title: &str) -> Change {
        let subject = Subject { id: ChangeId::new(origin, seq), title: title.into(), created_by: "ana".into(), time: 0 };
        change(origin, seq, lamport, ChangeKind::SubjectCreated { subject })
    }

    fn presence(origin: ServerId, seq: u64, lamport: u64, online: bool) -> Change {
        let kind = ChangeKind::PresenceChanged { user: "ana".into(), webserver: "w1".into(), online };
        change(origin, seq, lamport, kind)
    }

    #[test]
    fn apply_ignores_duplicates() {
        let mut state = ForumState::default();
        let first = registered(1, 1, 1, "ana", "h1");
        assert!(state.apply(&first));
        assert!(!state.apply(&first));
        assert_eq!(state.change_count(), 1);
        assert_eq!(state.next_seq(1), 2);
        assert_eq!(state.next_seq(2), 1);
        assert_eq!(state.next_lamport(), 2);
    }

    #[test]
    fn name_conflict_has_same_winner_in_any_order() {
        let early = registered(2, 1, 5, "Ana", "early");
        let late = registered(1, 1, 6, "ana", "late");
        for changes in [vec![early.clone(), late.clone()], vec![late.clone(), early.clone()]] {
            let state = ForumState::from_changes(changes);
            let credentials = state.credentials("ANA").expect("ana exists");
            assert_eq!(credentials.password_hash, "early");
            assert_eq!(credentials.user.id, ChangeId::new(2, 1));
            assert_eq!(credentials.lost_name_hashes, ["late"]);
        }
    }

    #[test]
    fn title_conflict_lists_only_winner() {
        let tie_low_origin = subject(1, 4, 7, "Exams");
        let tie_high_origin = subject(3, 2, 7, "exams");
        for changes in [vec![tie_low_origin.clone(), tie_high_origin.clone()], vec![tie_high_origin.clone(), tie_low_origin.clone()]] {
            let state = ForumState::from_changes(changes);
            let Reply::Subjects(subjects) = state.read(Read::ListSubjects) else { panic!("expected subjects") };
            assert_eq!(subjects.len(), 1);
            assert_eq!(subjects[0].id, ChangeId::new(1, 4));
        }
    }

    #[test]
    fn title_conflict_merges_histories() {
        let winner = subject(1, 4, 7, "Exams");
        let loser = subject(3, 2, 7, "exams");
        let post = |origin, seq, lamport, subject: ChangeId, text: &str| {
            let message =
                Message { id: ChangeId::new(origin, seq), subject, author: "ana".into(), text: text.into(), time: 0, lamport };
            change(origin, seq, lamport, ChangeKind::MessagePosted { message })
        };
        let on_loser = post(3, 3, 8, loser.id, "on the loser");
        let on_winner = post(1, 5, 9, winner.id, "on the winner");
        let ana = registered(2, 1, 1, "ana", "h");
        let mut orders = vec![vec![ana, winner.clone(), loser.clone(), on_loser.clone(), on_winner.clone()]];
        orders.push(orders[0].iter().rev().cloned().collect());
        for changes in orders {
            let state = ForumState::from_changes(changes);
            for id in [winner.id, loser.id] {
                let Reply::Messages(messages) = state.read(Read::History { subject: id, page: None }) else { panic!("expected messages") };
                let texts: Vec<&str> = messages.iter().map(|message| message.text.as_str()).collect();
                assert_eq!(texts, ["on the loser", "on the winner"], "history of {id}");
                assert!(messages.iter().all(|message| message.subject == winner.id), "messages show the winner's id");
            }
            let write = Write::PostMessage { subject: loser.id, author: "ana".into(), text: "late".into() };
            let Ok(Some(ChangeKind::MessagePosted { message })) = state.prepare(write, ChangeId::new(1, 9), 20, 0) else {
                panic!("a post to the loser is accepted")
            };
            assert_eq!(message.subject, winner.id, "a new post to the loser goes to the winner");
        }
    }

    #[test]
    fn brief_reply_names_only_what_differs() {
        let mut state = state_with_three_users();
        let (winner, loser) = (subject(1, 4, 7, "Exams"), subject(3, 2, 7, "exams"));
        state.apply(&winner);
        state.apply(&loser);
        let mut seq = 10;
        let mut brief = |write: Write, text: &str| {
            seq += 1;
            let requested = write.requested().expect("the write stores a message");
            let Ok(Some(kind)) = state.prepare(write, ChangeId::new(1, seq), seq, 5) else { panic!("the write is accepted") };
            let change = change(1, seq, seq, kind);
            let Some(Reply::Stored(stored)) = brief_reply_for(&change, &requested) else { panic!("expected a brief reply") };
            (stored, reply_for(change), text.to_owned())
        };

        let (stored, full, text) = brief(Write::PostMessage { subject: winner.id, author: "ana".into(), text: "hi".into() }, "hi");
        assert_eq!((stored.subject, &stored.author, &stored.to), (None, &None, &None), "nothing differs from the request");
        assert_eq!(Reply::Message(stored.message(winner.id, "ana".into(), text)), full);

        let (stored, full, text) = brief(Write::PostMessage { subject: loser.id, author: "ANA".into(), text: "hola".into() }, "hola");
        assert_eq!((stored.subject, stored.author.as_deref()), (Some(winner.id), Some("ana")), "merged subject, registered name");
        assert_eq!(Reply::Message(stored.message(loser.id, "ANA".into(), text)), full);

        let (stored, full, text) = brief(Write::SendPrivate { from: "Bob".into(), to: "carol".into(), text: "hi".into() }, "hi");
        assert_eq!((stored.author.as_deref(), stored.to.as_deref()), (Some("bob"), None));
        assert_eq!(Reply::PrivateMessage(stored.private_message("Bob".into(), "carol".into(), text)), full);

        let (stored, full, text) = brief(Write::SendPrivate { from: "bob".into(), to: "CAROL".into(), text: "hi".into() }, "hi");
        assert_eq!((stored.author.as_deref(), stored.to.as_deref()), (None, Some("carol")));
        assert_eq!(Reply::PrivateMessage(stored.private_message("bob".into(), "CAROL".into(), text)), full);
    }

    #[test]
    fn presence_keeps_latest_in_any_order() {
        let online = presence(1, 2, 2, true);
        let offline = presence(1, 3, 3, false);
        for changes in [vec![online.clone(), offline.clone()], vec![offline.clone(), online.clone()]] {
            let mut state = ForumState::from_changes(changes);
            state.apply(&registered(1, 1, 1, "ana", "h"));
            let Reply::Users(users) = state.read(Read::ListUsers) else { panic!("expected users") };
            assert_eq!(users, vec![UserStatus { name: "ana".into(), online: false }]);
        }
    }

    #[test]
    fn history_sorts_by_order_key() {
        let mut state = ForumState::default();
        state.apply(&registered(1, 1, 1, "ana", "h"));
        state.apply(&subject(1, 2, 2, "Exams"));
        let post = |origin, seq, lamport, text: &str| {
            let message = Message {
                id: ChangeId::new(origin, seq),
                subject: ChangeId::new(1, 2),
                author: "ana".into(),
                text: text.into(),
                time: 0,
                lamport,
            };
            change(origin, seq, lamport, ChangeKind::MessagePosted { message })
        };
        state.apply(&post(2, 9, 4, "third"));
        state.apply(&post(1, 3, 3, "first"));
        state.apply(&post(1, 4, 4, "second"));
        let Reply::Messages(messages) = state.read(Read::History { subject: ChangeId::new(1, 2), page: None }) else {
            panic!("expected messages")
        };
        let texts: Vec<&str> = messages.iter().map(|message| message.text.as_str()).collect();
        assert_eq!(texts, ["first", "second", "third"]);
    }

    /// Builds a state with user ana, the subject 1-2 "Exams" and `count` posts in it, with
    /// ids 1-3 upwards and texts "0", "1" and so on, oldest first.
    fn subject_with_posts(count: u64) -> ForumState {
        let mut state = ForumState::default();
        state.apply(&registered(1, 1, 1, "ana", "h"));
        state.apply(&subject(1, 2, 2, "Exams"));
        for number in 0..count {
            state.apply(&post_in(ChangeId::new(1, 2), 1, number + 3, number + 3, &number.to_string()));
        }
        state
    }

    fn post_in(subject: ChangeId, origin: ServerId, seq: u64, lamport: u64, text: &str) -> Change {
        let message = Message { id: ChangeId::new(origin, seq), subject, author: "ana".into(), text: text.into(), time: 0, lamport };
        change(origin, seq, lamport, ChangeKind::MessagePosted { message })
    }

    fn history_page(state: &ForumState, before: Option<ChangeId>, limit: usize) -> Result<Page<Message>, ErrorReply> {
        match state.read(Read::History { subject: ChangeId::new(1, 2), page: Some(PageRequest { before, limit }) }) {
            Reply::MessagePage(page) => Ok(page),
            Reply::Error(error) => Err(error),
            other => panic!("expected a page, got {other:?}"),
        }
    }

    fn page_texts(page: &Page<Message>) -> Vec<&str> {
        page.messages.iter().map(|message| message.text.as_str()).collect()
    }

    #[test]
    fn first_page_is_newest_in_history_order() {
        let state = subject_with_posts(5);
        let page = history_page(&state, None, 2).unwrap();
        assert_eq!(page_texts(&page), ["3", "4"]);
        assert!(page.more, "three older messages remain");

        let whole = history_page(&state, None, 5).unwrap();
        assert_eq!(page_texts(&whole), ["0", "1", "2", "3", "4"]);
        assert!(!whole.more, "a page with every message has no more");
    }

    #[test]
    fn pages_walk_back_without_gaps() {
        let state = subject_with_posts(103);
        let mut walked: Vec<String> = Vec::new();
        let mut before = None;
        let mut pages = 0;
        loop {
            let page = history_page(&state, before, 10).unwrap();
            pages += 1;
            assert!(page.messages.len() == 10 || !page.more, "only the last page is short");
            let mut texts: Vec<String> = page.messages.iter().map(|message| message.text.clone()).collect();
            texts.extend(walked);
            walked = texts;
            if !page.more {
                break;
            }
            before = Some(page.messages[0].id);
        }
        let expected: Vec<String> = (0..103).map(|number: u64| number.to_string()).collect();
        assert_eq!(walked, expected, "every message once, in history order");
        assert_eq!(pages, 11);
    }

    #[test]
    fn page_rejects_unknown_cursor() {
        let mut state = subject_with_posts(3);
        state.apply(&subject(1, 10, 10, "Other"));
        state.apply(&post_in(ChangeId::new(1, 10), 1, 11, 11, "elsewhere"));

        for cursor in [ChangeId::new(9, 9), ChangeId::new(1, 1), ChangeId::new(1, 2), ChangeId::new(1, 11)] {
            let error = history_page(&state, Some(cursor), 10).unwrap_err();
            assert_eq!(error.code, ErrorCode::UnknownMessage, "cursor {cursor}");
            assert!(error.message.contains(&cursor.to_string()), "{}", error.message);
        }
    }

    #[test]
    fn page_of_empty_subject() {
        let state = subject_with_posts(0);
        let page = history_page(&state, None, 10).unwrap();
        assert!(page.messages.is_empty());
        assert!(!page.more);
    }

    #[test]
    fn page_of_unknown_subject() {
        let state = subject_with_posts(1);
        let read = Read::History { subject: ChangeId::new(7, 7), page: Some(PageRequest { before: None, limit: 10 }) };
        let Reply::Error(error) = state.read(read) else { panic!("expected an error") };
        assert_eq!(error.code, ErrorCode::UnknownSubject);
    }

    #[test]
    fn pages_stay_put_when_messages_arrive() {
        let mut state = subject_with_posts(6);
        let first = history_page(&state, None, 3).unwrap();
        assert_eq!(page_texts(&first), ["3", "4", "5"]);

        // A new post, and a replicated one from another server that sorts into the middle of
        // the pages already read: the cursor still ends the next page where the first began.
        state.apply(&post_in(ChangeId::new(1, 2), 1, 9, 9, "new"));
        state.apply(&post_in(ChangeId::new(1, 2), 2, 1, 3, "concurrent"));
        let second = history_page(&state, Some(first.messages[0].id), 3).unwrap();
        assert_eq!(page_texts(&second), ["concurrent", "1", "2"]);
        assert!(second.more);
        let third = history_page(&state, Some(second.messages[0].id), 3).unwrap();
        assert_eq!(page_texts(&third), ["0"]);
        assert!(!third.more);
        assert_eq!(page_texts(&history_page(&state, None, 1).unwrap()), ["new"]);
    }

    #[test]
    fn page_before_withdrawn_duplicate() {
        // A client read a page whose first message is 1-8. Then a retried copy of the same
        // write (same idempotency key) arrives from server 2 with a smaller order key, so 1-8
        // is withdrawn. The cursor 1-8 from the client's `Link` header should still end the
        // next page, because a client that follows `Link` headers has no other cursor, and
        // the forum page keeps 1-8 as its cursor after the `withdraw` event.
        let mut state = subject_with_posts(5);
        let key = IdempotencyKey { client: 7, request: 1 };
        let mut original = post_in(ChangeId::new(1, 2), 1, 8, 8, "retried");
        original.key = Some(key);
        state.apply(&original);
        let first = history_page(&state, None, 1).unwrap();
        assert_eq!(first.messages[0].id, ChangeId::new(1, 8));

        let mut copy = post_in(ChangeId::new(1, 2), 2, 1, 7, "retried");
        copy.key = Some(key);
        state.apply(&copy);
        let second = history_page(&state, Some(ChangeId::new(1, 8)), 2);
        let second = second.expect("a cursor at a withdrawn duplicate is rejected");
        assert_eq!(page_texts(&second), ["4", "retried"]);
        assert_eq!(second.messages[1].id, ChangeId::new(2, 1));
    }

    #[test]
    fn page_covers_merged_subjects() {
        let mut state = ForumState::default();
        state.apply(&registered(2, 1, 1, "ana", "h"));
        let winner = subject(1, 4, 7, "Exams");
        let loser = subject(3, 2, 7, "exams");
        state.apply(&winner);
        state.apply(&loser);
        state.apply(&post_in(winner.id, 1, 5, 8, "a"));
        state.apply(&post_in(loser.id, 3, 3, 9, "b"));
        state.apply(&post_in(winner.id, 1, 6, 10, "c"));

        let page = |before| {
            let read = Read::History { subject: loser.id, page: Some(PageRequest { before, limit: 2 }) };
            let Reply::MessagePage(page) = state.read(read) else { panic!("expected a page") };
            page
        };
        let first = page(None);
        assert_eq!(page_texts(&first), ["b", "c"]);
        assert!(first.messages.iter().all(|message| message.subject == winner.id), "messages show the winner's id");
        assert!(first.more);
        let second = page(Some(first.messages[0].id));
        assert_eq!(page_texts(&second), ["a"]);
        assert!(!second.more);
    }

    /// Builds a state with the users ana, bob and carol (changes 1-1 to 1-3).
    fn state_with_three_users() -> ForumState {
        let mut state = ForumState::default();
        state.apply(&registered(1, 1, 1, "ana", "h"));
        state.apply(&registered(1, 2, 2, "bob", "h"));
        state.apply(&registered(1, 3, 3, "carol", "h"));
        state
    }

    #[test]
    fn conversation_pages_walk_back() {
        let mut state = state_with_three_users();
        for seq in 4..9 {
            let message =
                PrivateMessage { id: ChangeId::new(1, seq), from: "ana".into(), to: "bob".into(), text: seq.to_string(), time: 0, lamport: seq };
            state.apply(&change(1, seq, seq, ChangeKind::PrivateSent { message }));
        }
        let page = |user: &str, other: &str, before, limit| {
            let read = Read::PrivateHistory { user: user.into(), other: other.into(), page: Some(PageRequest { before, limit }) };
            state.read(read)
        };
        let texts = |reply: &Reply| match reply {
            Reply::PrivatePage(page) => (page.messages.iter().map(|message| message.text.clone()).collect::<Vec<_>>(), page.more),
            other => panic!("expected a page, got {other:?}"),
        };

        let first = page("BOB", "ana", None, 3);
        assert_eq!(texts(&first), (vec!["6".to_string(), "7".into(), "8".into()], true));
        let second = page("ana", "bob", Some(ChangeId::new(1, 6)), 3);
        assert_eq!(texts(&second), (vec!["4".to_string(), "5".into()], false));
        assert_eq!(texts(&page("ana", "carol", None, 3)), (Vec::new(), false), "no messages yet");

        let Reply::Error(error) = page("ana", "carol", Some(ChangeId::new(1, 6)), 3) else { panic!("expected an error") };
        assert_eq!(error.code, ErrorCode::UnknownMessage, "a message of another conversation");
        let Reply::Error(error) = page("ana", "dave", None, 3) else { panic!("expected an error") };
        assert_eq!(error.code, ErrorCode::UnknownUser);
    }

    #[test]
    fn private_page_before_withdrawn_duplicate() {
        let mut state = state_with_three_users();
        let key = IdempotencyKey { client: 7, request: 1 };
        let sent = |origin, seq, lamport, text: &str| {
            let message = PrivateMessage { id: ChangeId::new(origin, seq), from: "ana".into(), to: "bob".into(), text: text.into(), time: 0, lamport };
            change(origin, seq, lamport, ChangeKind::PrivateSent { message })
        };
        state.apply(&sent(1, 4, 4, "first"));
        let mut original = sent(1, 5, 6, "retried");
        original.key = Some(key);
        state.apply(&original);
        // A copy of the same write with a smaller order key withdraws 1-5.
        let mut copy = sent(2, 1, 5, "retried");
        copy.key = Some(key);
        state.apply(&copy);

        let page = |user: &str, other: &str| {
            let read = Read::PrivateHistory { user: user.into(), other: other.into(), page: Some(PageRequest { before: Some(ChangeId::new(1, 5)), limit: 5 }) };
            state.read(read)
        };
        let Reply::PrivatePage(older) = page("bob", "ana") else { panic!("a cursor at a withdrawn copy is rejected") };
        let texts: Vec<&str> = older.messages.iter().map(|message| message.text.as_str()).collect();
        assert_eq!(texts, ["first", "retried"]);
        assert_eq!(older.messages[1].id, ChangeId::new(2, 1));
        let Reply::Error(error) = page("ana", "carol") else { panic!("expected an error") };
        assert_eq!(error.code, ErrorCode::UnknownMessage, "the withdrawn copy belongs to another conversation");
    }

    #[test]
    fn prepare_rejects_taken_and_unknown() {
        let mut state = ForumState::default();
        state.apply(&registered(1, 1, 1, "ana", "h"));
        state.apply(&subject(1, 2, 2, "Exams"));
        let stamp = (ChangeId::new(1, 3), 3, 0);
        let code = |write| state.prepare(write, stamp.0, stamp.1, stamp.2).unwrap_err().code;

        assert_eq!(code(Write::Register { name: "ANA".into(), password_hash: "h".into() }), ErrorCode::NameTaken);
        assert_eq!(code(Write::CreateSubject { title: " exams ".into(), created_by: "ana".into() }), ErrorCode::TitleTaken);
        assert_eq!(code(Write::CreateSubject { title: "New".into(), created_by: "bob".into() }), ErrorCode::UnknownUser);
        let unknown_subject = Write::PostMessage { subject: ChangeId::new(9, 9), author: "ana".into(), text: "hi".into() };
        assert_eq!(code(unknown_subject), ErrorCode::UnknownSubject);
        let unknown_recipient = Write::SendPrivate { from: "ana".into(), to: "bob".into(), text: "hi".into() };
        assert_eq!(code(unknown_recipient), ErrorCode::UnknownUser);
    }

    #[test]
    fn prepare_skips_unchanged_presence() {
        let mut state = ForumState::default();
        state.apply(&registered(1, 1, 1, "ana", "h"));
        let offline = Write::SetPresence { user: "ana".into(), webserver: "w1".into(), online: false };
        assert_eq!(state.prepare(offline, ChangeId::new(1, 2), 2, 0), Ok(None));
    }

    fn posted(seq: u64, subject: ChangeId, text: String) -> Change {
        let message = Message { id: ChangeId::new(1, seq), subject, author: "ana".into(), text, time: 0, lamport: seq };
        change(1, seq, seq, ChangeKind::MessagePosted { message })
    }

    fn private_sent(seq: u64, text: String) -> Change {
        let message = PrivateMessage { id: ChangeId::new(1, seq), from: "ana".into(), to: "bea".into(), text, time: 0, lamport: seq };
        change(1, seq, seq, ChangeKind::PrivateSent { message })
    }

    /// The estimate of a message's encoded size must never be smaller than the real one, so
    /// the fixed part must cover the longest ids and the headers of the longest strings.
    #[test]
    fn message_overhead_covers_longest_ids() {
        let longest = ChangeId::new(ServerId::MAX, u64::MAX);
        // The maximum name length in bytes: the maximum number of letters, 4 bytes each.
        let name = "\u{1D49C}".repeat(forum_protocol::MAX_NAME_CHARS);
        let text = "x".repeat(forum_protocol::MAX_TEXT_BYTES);
        for (author, text) in [(String::new(), String::new()), (name.clone(), text.clone())] {
            let estimate = MESSAGE_OVERHEAD_BYTES + text.len() + author.len();
            let message = Message { id: longest, subject: longest, author, text, time: u64::MAX, lamport: u64::MAX };
            let encoded = forum_protocol::encode(&message).len();
            assert!(encoded <= estimate, "a message takes {encoded} bytes, estimated {estimate}");
        }
        for (from, text) in [(String::new(), String::new()), (name.clone(), text.clone())] {
            let estimate = MESSAGE_OVERHEAD_BYTES + text.len() + 2 * from.len();
            let private = PrivateMessage { id: longest, to: from.clone(), from, text, time: u64::MAX, lamport: u64::MAX };
            let encoded = forum_protocol::encode(&private).len();
            assert!(encoded <= estimate, "a private message takes {encoded} bytes, estimated {estimate}");
        }
    }

    /// A whole history is returned up to the reply size that web servers accept, and its
    /// encoded reply fits in it. One more message makes the request invalid.
    #[test]
    fn unpaged_history_bounded_by_reply_size() {
        const TEXT_BYTES: usize = 4000;
        let fitting = MAX_REPLY_BYTES / (MESSAGE_OVERHEAD_BYTES + TEXT_BYTES + "ana".len());
        let topic = subject(1, 2, 2, "Exams");
        let mut changes = vec![registered(1, 1, 1, "ana", "h"), topic.clone()];
        changes.extend((0..fitting as u64).map(|index| posted(index + 3, topic.id, "x".repeat(TEXT_BYTES))));
        let mut state = ForumState::from_changes(changes);

        let read = || Read::History { subject: topic.id, page: None };
        let reply = state.read(read());
        let Reply::Messages(messages) = &reply else { panic!("expected the whole history, got an error") };
        assert_eq!(messages.len(), fitting);
        let encoded = forum_protocol::encode(&forum_protocol::WireReply { v: forum_protocol::PROTOCOL_VERSION, id: u64::MAX, reply: reply.clone() });
        assert!(encoded.len() <= MAX_REPLY_BYTES, "the reply takes {} bytes", encoded.len());

        state.apply(&posted(fitting as u64 + 3, topic.id, "x".repeat(TEXT_BYTES)));
        match state.read(read()) {
            Reply::Error(rejection) => {
                assert_eq!(rejection.code, ErrorCode::InvalidInput);
                assert!(rejection.message.contains("in pages"), "the message says what to do: {}", rejection.message);
            }
            _ => panic!("expected an error for a history larger than one reply"),
        }
        let page = Read::History { subject: topic.id, page: Some(PageRequest { before: None, limit: 10 }) };
        assert!(matches!(state.read(page), Reply::MessagePage(_)), "pages of the same history are still served");
    }

    /// The same bound for a conversation, through `read` as a request takes it.
    #[test]
    fn unpaged_conversation_bounded_by_reply_size() {
        const TEXT_BYTES: usize = 4000;
        let fitting = MAX_REPLY_BYTES / (MESSAGE_OVERHEAD_BYTES + TEXT_BYTES + "ana".len() + "bea".len());
        let mut state = ForumState::from_changes([registered(1, 1, 1, "ana", "h"), registered(1, 2, 2, "bea", "h")]);
        for index in 0..fitting as u64 {
            state.apply(&private_sent(index + 3, "x".repeat(TEXT_BYTES)));
        }

        let read = || Read::PrivateHistory { user: "ana".into(), other: "bea".into(), page: None };
        let reply = state.read(read());
        let Reply::PrivateMessages(messages) = &reply else { panic!("expected the whole conversation, got an error") };
        assert_eq!(messages.len(), fitting);
        let encoded = forum_protocol::encode(&forum_protocol::WireReply { v: forum_protocol::PROTOCOL_VERSION, id: u64::MAX, reply: reply.clone() });
        assert!(encoded.len() <= MAX_REPLY_BYTES, "the reply takes {} bytes", encoded.len());

        state.apply(&private_sent(fitting as u64 + 3, "x".repeat(TEXT_BYTES)));
        match state.read(read()) {
            Reply::Error(rejection) => {
                assert_eq!(rejection.code, ErrorCode::InvalidInput);
                assert!(rejection.message.contains("in pages"), "the message says what to do: {}", rejection.message);
            }
            _ => panic!("expected an error for a conversation larger than one reply"),
        }
        let page = Read::PrivateHistory { user: "ana".into(), other: "bea".into(), page: Some(PageRequest { before: None, limit: 10 }) };
        assert!(matches!(state.read(page), Reply::PrivatePage(_)), "pages of the same conversation are still served");
    }
}
