//! Retried writes: the changes that carry the same idempotency key.
//!
//! A web server that loses its data server mid-write sends the same write, with the same key,
//! to another data server. When the first server had stored it too, the group contains two
//! changes with one key. Every replica then keeps the change with the smallest order key
//! (lamport, origin, seq) and withdraws the other, so the result is the same on every replica
//! whatever the order of arrival.
//!
//! Only messages are withdrawn. A duplicated user or subject is already resolved by the name
//! and title rules, which keep the same winner, and presence and session changes repeat
//! harmlessly.

use std::collections::{BTreeMap, HashMap};

use forum_protocol::{Change, ChangeId, ChangeKind, IdempotencyKey};

/// The record of the change that won an idempotency key.
pub(crate) enum Kept<'a> {
    /// A public message, found again in the state by its subject and order key.
    Post(PostRef),
    /// Any other change, whole.
    Whole(&'a Change),
}

/// The location of the public message that won a key: its order key and its subject. Posts
/// are most of the writes, so this record is small: 32 bytes.
#[derive(Clone, Copy)]
pub(crate) struct PostRef {
    lamport: u64,
    seq: u64,
    subject_seq: u64,
    origin: u32,
    subject_origin: u32,
}

impl PostRef {
    pub fn order(&self) -> (u64, u32, u64) {
        (self.lamport, self.origin, self.seq)
    }

    pub fn subject(&self) -> ChangeId {
        ChangeId::new(self.subject_origin, self.subject_seq)
    }

    /// Returns the id of the post's change.
    pub fn id(&self) -> ChangeId {
        ChangeId::new(self.origin, self.seq)
    }
}

/// The kept change of every idempotency key seen.
///
/// NOTE: keys are kept for as long as the server runs and are rebuilt from the store at
/// start, so this map grows with the number of writes, like the rest of the state. Posts are
/// kept per client in a B-tree by request id, the order in which a client sends them, which
/// takes less memory than one hash table of every key (measured in docs/benchmarks.md).
#[derive(Default)]
pub(crate) struct Writes {
    posts: HashMap<u64, BTreeMap<u64, PostRef>>,
    others: HashMap<IdempotencyKey, Box<Change>>,
    /// For the keys whose kept message replaced one applied before it, that message's id, so
    /// a replayed feed can withdraw it too. Few keys ever have two copies.
    replaced: HashMap<IdempotencyKey, ChangeId>,
}

fn order_key(change: &Change) -> (u64, u32, u64) {
    (change.lamport, change.id.origin, change.id.seq)
}

/// Returns whether a duplicate of this kind of change must be withdrawn.
fn withdrawn_when_duplicate(kind: &ChangeKind) -> bool {
    matches!(kind, ChangeKind::MessagePosted { .. } | ChangeKind::PrivateSent { .. })
}

/// The decision for a change, given the other changes of its key.
pub(crate) enum Admission {
    /// Apply it as usual.
    Apply,
    /// Do not apply it: a change with the same key and a smaller order key is kept.
    Skip,
    /// Apply it and withdraw the public message of this reference, which had the same key
    /// and a greater order key.
    ReplacePost(PostRef),
    /// Apply it and withdraw this change, which had the same key and a greater order key.
    Replace(Box<Change>),
}

impl Writes {
    /// Records a change that is being applied and decides what becomes of it. `key_is_new` is
    /// true when the caller has just found the change's key unused, which saves looking it up.
    pub fn admit(&mut self, change: &Change, key_is_new: bool) -> Admission {
        let Some(key) = change.key else { return Admission::Apply };
        let withdrawn = withdrawn_when_duplicate(&change.kind);
        debug_assert!(!key_is_new || self.original(key).is_none(), "a key said to be new is in use");
        let kept_order = if key_is_new {
            None
        } else {
            self.original(key).map(|kept| match kept {
                Kept::Post(post) => post.order(),
                Kept::Whole(kept) => order_key(kept),
            })
        };
        if kept_order.is_some_and(|kept| order_key(change) > kept) {
            return if withdrawn { Admission::Skip } else { Admission::Apply };
        }
        // This change is the first of its key, or wins it: it replaces the kept one.
        let replaced = match &change.kind {
            ChangeKind::MessagePosted { message } => {
                let post = PostRef {
                    lamport: change.lamport,
                    seq: change.id.seq,
                    subject_seq: message.subject.seq,
                    origin: change.id.origin,
                    subject_origin: message.subject.origin,
                };
                let replaced = self.posts.entry(key.client).or_default().insert(key.request, post);
                replaced.map(Admission::ReplacePost)
            }
            _ => self.others.insert(key, Box::new(change.clone())).map(Admission::Replace),
        };
        match replaced {
            Some(replaced) if withdrawn => {
                let replaced_id = match &replaced {
                    Admission::ReplacePost(post) => Some(post.id()),
                    Admission::Replace(change) => Some(change.id),
                    Admission::Apply | Admission::Skip => None,
                };
                if let Some(replaced_id) = replaced_id {
                    self.replaced.insert(key, replaced_id);
                }
                replaced
            }
            _ => Admission::Apply,
        }
    }

    /// Returns the id of the message that the kept message of `key` replaced, if it replaced one.
    pub fn replaced(&self, key: IdempotencyKey) -> Option<ChangeId> {
        self.replaced.get(&key).copied()
    }

    /// Returns what is kept of a key's change, for replying to a retried write.
    pub fn original(&self, key: IdempotencyKey) -> Option<Kept<'_>> {
        if let Some(post) = self.posts.get(&key.client).and_then(|posts| posts.get(&key.request)) {
            return Some(Kept::Post(*post));
        }
        self.others.get(&key).map(|change| Kept::Whole(change))
    }
}

#[cfg(test)]
mod tests {
    use forum_protocol::{ChangeId, FeedNote, Message, Reply, Subject, User};

    use super::*;
    use crate::command::Read;
    use crate::state::ForumState;

    const KEY: IdempotencyKey = IdempotencyKey { client: 7, request: 42 };

    fn setup() -> Vec<Change> {
        let user = User { id: ChangeId::new(1, 1), name: "ana".into(), time: 0 };
        let subject = Subject { id: ChangeId::new(1, 2), title: "Exams".into(), created_by: "ana".into(), time: 0 };
        vec![
            Change {
                id: user.id,
                lamport: 1,
                time: 0,
                kind: ChangeKind::UserRegistered { user, password_hash: "h".into() },
                key: None,
            },
            Change { id: subject.id, lamport: 2, time: 0, kind: ChangeKind::SubjectCreated { subject }, key: None },
        ]
    }

    fn post(origin: u32, seq: u64, lamport: u64) -> Change {
        let message = Message {
            id: ChangeId::new(origin, seq),
            subject: ChangeId::new(1, 2),
            author: "ana".into(),
            text: "in flight".into(),
            time: 0,
            lamport,
        };
        Change { id: message.id, lamport, time: 0, kind: ChangeKind::MessagePosted { message }, key: Some(KEY) }
    }

    #[test]
    fn second_copy_gets_feed_note() {
        let (first, retried) = (post(1, 3, 3), post(2, 1, 3));

        let mut state = ForumState::from_changes(setup());
        assert_eq!(state.apply_noted(&retried), Some(FeedNote::default()), "the first copy to arrive is shown");
        let note = FeedNote { hidden: false, replaces: Some(retried.id) };
        assert_eq!(state.apply_noted(&first), Some(note), "the winner names the copy it replaces");
        assert_eq!(state.apply_noted(&first), None, "a change applied again is a duplicate");

        let mut state = ForumState::from_changes(setup());
        assert_eq!(state.apply_noted(&first), Some(FeedNote::default()));
        assert_eq!(state.apply_noted(&retried), Some(FeedNote { hidden: true, replaces: None }), "the loser is hidden");
        assert_eq!(state.kept_ids(&[KEY]), vec![Some((first.id, None))]);

        let mut state = ForumState::from_changes(setup());
        state.apply_noted(&retried);
        state.apply_noted(&first);
        assert_eq!(state.kept_ids(&[KEY]), vec![Some((first.id, Some(retried.id)))], "a replay withdraws the replaced copy");
    }

    #[test]
    fn duplicate_write_kept_once_in_any_order() {
        let first = post(1, 3, 3);
        let retried = post(2, 1, 3);
        for order in [[&first, &retried], [&retried, &first]] {
            let mut changes = setup();
            changes.extend(order.iter().map(|change| (*change).clone()));
            let state = ForumState::from_changes(changes);
            let Reply::Messages(messages) = state.read(Read::History { subject: ChangeId::new(1, 2), page: None }) else {
                panic!("expected messages")
            };
            let ids: Vec<ChangeId> = messages.iter().map(|message| message.id).collect();
            assert_eq!(ids, [ChangeId::new(1, 3)], "the smallest (lamport, origin, seq) is kept");
            let Some(Reply::Message(original)) = state.original_reply(KEY) else { panic!("expected the kept message") };
            assert_eq!(original.id, ChangeId::new(1, 3));
            assert_eq!(original.text, "in flight");
        }
    }
}
