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

use std::collections::HashMap;

use forum_protocol::{Change, ChangeKind, IdempotencyKey};

/// The decision for a change, given the other changes of its key.
pub(crate) enum Admission {
    /// Apply it as usual.
    Apply,
    /// Do not apply it: a change with the same key and a smaller order key is kept.
    Skip,
    /// Apply it and withdraw the returned change, which had the same key and a greater order key.
    Replace(Change),
}

/// The kept change of every idempotency key seen.
///
/// NOTE: keys are kept for as long as the server runs and are rebuilt from the store at
/// start, so this map grows with the number of writes, like the rest of the state.
#[derive(Default)]
pub(crate) struct Writes {
    kept: HashMap<IdempotencyKey, Change>,
}

fn order_key(change: &Change) -> (u64, u32, u64) {
    (change.lamport, change.id.origin, change.id.seq)
}

/// Returns whether a duplicate of this kind of change must be withdrawn.
fn withdrawn_when_duplicate(kind: &ChangeKind) -> bool {
    matches!(kind, ChangeKind::MessagePosted { .. } | ChangeKind::PrivateSent { .. })
}

impl Writes {
    /// Records a change that is being applied and decides what becomes of it.
    pub fn admit(&mut self, change: &Change) -> Admission {
        let Some(key) = change.key else { return Admission::Apply };
        let Some(kept) = self.kept.get(&key) else {
            self.kept.insert(key, change.clone());
            return Admission::Apply;
        };
        if order_key(change) > order_key(kept) {
            return if withdrawn_when_duplicate(&change.kind) { Admission::Skip } else { Admission::Apply };
        }
        let replaced = self.kept.insert(key, change.clone()).expect("the key was present");
        if withdrawn_when_duplicate(&change.kind) {
            Admission::Replace(replaced)
        } else {
            Admission::Apply
        }
    }

    /// Returns the kept change of a key, for replying to a retried write.
    pub fn original(&self, key: IdempotencyKey) -> Option<&Change> {
        self.kept.get(&key)
    }
}

#[cfg(test)]
mod tests {
    use forum_protocol::{ChangeId, Message, Reply, Subject, User};

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
    fn duplicate_write_kept_once_in_any_order() {
        let first = post(1, 3, 3);
        let retried = post(2, 1, 3);
        for order in [[&first, &retried], [&retried, &first]] {
            let mut changes = setup();
            changes.extend(order.iter().map(|change| (*change).clone()));
            let state = ForumState::from_changes(changes);
            let Reply::Messages(messages) = state.read(Read::History { subject: ChangeId::new(1, 2) }) else {
                panic!("expected messages")
            };
            let ids: Vec<ChangeId> = messages.iter().map(|message| message.id).collect();
            assert_eq!(ids, [ChangeId::new(1, 3)], "the smallest (lamport, origin, seq) is kept");
            assert_eq!(state.original_write(KEY).map(|change| change.id), Some(ChangeId::new(1, 3)));
        }
    }
}
