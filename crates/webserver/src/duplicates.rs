//! Second copies of a message stored twice.
//!
//! A web server that fails over sends a write in flight again, with the same idempotency key,
//! to its next data server. When the first data server had stored it too, the group holds two
//! changes with one key, and keeps the one with the smallest order key (lamport, origin, seq)
//! in every history. The feed still carries both. This tracker remembers the messages of recent
//! keys, so that a page gets one copy: nothing for a copy that loses, or a `withdraw` event for
//! the copy it was shown before, when the new one wins.

use std::collections::{HashMap, VecDeque};

use forum_protocol::{Change, ChangeId, ChangeKind, IdempotencyKey};

/// The keys remembered. A retried write reaches the feed within seconds of the first copy, while
/// the data servers catch up, so the last few thousand messages cover it.
pub const RECENT_KEYS: usize = 4096;

/// What a page is shown of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Show it: the first copy of its key.
    Show,
    /// Show nothing: another copy of the same write is kept.
    Hide,
    /// Show it and remove the copy with this id, which it replaces.
    Replace(ChangeId),
}

type OrderKey = (u64, u32, u64);

/// The kept message of each recent idempotency key.
#[derive(Default)]
pub struct RecentMessages {
    kept: HashMap<IdempotencyKey, (OrderKey, ChangeId)>,
    /// Keys in the order they arrived, oldest first, to forget the oldest.
    arrival: VecDeque<IdempotencyKey>,
}

impl RecentMessages {
    /// Records a change of the feed and decides what pages see of it.
    pub fn admit(&mut self, change: &Change) -> Verdict {
        let is_message = matches!(change.kind, ChangeKind::MessagePosted { .. } | ChangeKind::PrivateSent { .. });
        let Some(key) = change.key.filter(|_| is_message) else { return Verdict::Show };
        let order = (change.lamport, change.id.origin, change.id.seq);
        match self.kept.get(&key).copied() {
            None => {
                self.kept.insert(key, (order, change.id));
                self.arrival.push_back(key);
                if self.arrival.len() > RECENT_KEYS {
                    if let Some(oldest) = self.arrival.pop_front() {
                        self.kept.remove(&oldest);
                    }
                }
                Verdict::Show
            }
            Some((kept_order, _)) if kept_order <= order => Verdict::Hide,
            Some((_, replaced)) => {
                self.kept.insert(key, (order, change.id));
                Verdict::Replace(replaced)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use forum_protocol::Message;

    use super::*;

    fn post(origin: u32, seq: u64, lamport: u64, request: u64) -> Change {
        let message = Message {
            id: ChangeId::new(origin, seq),
            subject: ChangeId::new(1, 1),
            author: "ana".into(),
            text: "hola".into(),
            time: 0,
            lamport,
        };
        let key = Some(IdempotencyKey { client: 9, request });
        Change { id: message.id, lamport, time: 0, kind: ChangeKind::MessagePosted { message }, key }
    }

    #[test]
    fn later_losing_copy_is_hidden() {
        let mut recent = RecentMessages::default();
        assert_eq!(recent.admit(&post(1, 5, 10, 1)), Verdict::Show);
        assert_eq!(recent.admit(&post(2, 3, 11, 1)), Verdict::Hide);
        assert_eq!(recent.admit(&post(1, 5, 10, 1)), Verdict::Hide, "the same change twice");
    }

    #[test]
    fn later_winning_copy_replaces_first() {
        let mut recent = RecentMessages::default();
        assert_eq!(recent.admit(&post(3, 7, 12, 1)), Verdict::Show);
        assert_eq!(recent.admit(&post(1, 64, 11, 1)), Verdict::Replace(ChangeId::new(3, 7)));
        assert_eq!(recent.admit(&post(3, 7, 12, 1)), Verdict::Hide, "the replaced copy again");
    }

    #[test]
    fn other_keys_and_changes_are_shown() {
        let mut recent = RecentMessages::default();
        assert_eq!(recent.admit(&post(1, 1, 1, 1)), Verdict::Show);
        assert_eq!(recent.admit(&post(1, 2, 2, 2)), Verdict::Show);
        let mut unkeyed = post(2, 1, 3, 1);
        unkeyed.key = None;
        assert_eq!(recent.admit(&unkeyed), Verdict::Show);
    }

    #[test]
    fn oldest_keys_are_forgotten() {
        let mut recent = RecentMessages::default();
        for request in 0..=RECENT_KEYS as u64 {
            recent.admit(&post(1, request + 1, request + 1, request));
        }
        assert_eq!(recent.kept.len(), RECENT_KEYS);
        assert_eq!(recent.admit(&post(2, 1, 0, 0)), Verdict::Show, "key 0 was forgotten");
    }
}
