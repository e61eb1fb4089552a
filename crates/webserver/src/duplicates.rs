//! Second copies of a message stored twice.
//!
//! A web server that fails over sends a write in flight again, with the same idempotency key,
//! to its next data server. When the first data server had stored it too, the group has two
//! changes with one key, and every replica keeps the one with the smallest order key
//! (lamport, origin, seq) in its histories. The feed carries both, each with the data server's
//! [`FeedNote`]: the losing copy is hidden, and a winning copy that arrives second names the copy
//! it replaces. The data server decides from every key it holds, so the note is right however
//! far apart the two copies arrive.

use forum_protocol::{ChangeId, FeedNote};

/// The part of a change that pages are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Show it as it is.
    Show,
    /// Show nothing: another copy of the same write is kept.
    Hide,
    /// Show it and remove the copy with this id, which it replaces.
    Replace(ChangeId),
}

impl Verdict {
    /// Returns the verdict for a change with the data server's note.
    pub fn of(note: FeedNote) -> Verdict {
        match (note.hidden, note.replaces) {
            (true, _) => Verdict::Hide,
            (false, Some(replaced)) => Verdict::Replace(replaced),
            (false, None) => Verdict::Show,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_gives_verdict() {
        assert_eq!(Verdict::of(FeedNote::default()), Verdict::Show);
        assert_eq!(Verdict::of(FeedNote { hidden: true, replaces: None }), Verdict::Hide);
        let replaced = ChangeId::new(3, 7);
        assert_eq!(Verdict::of(FeedNote { hidden: false, replaces: Some(replaced) }), Verdict::Replace(replaced));
    }
}
