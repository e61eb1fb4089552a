//! Separate connection caps for clients that have proven themselves and clients that have not.
//!
//! A listener with a [`PendingPool`] counts each connection as pending from accept until its
//! service calls [`Admission::admit`], and as admitted after that. Pending connections have
//! their own cap, `max_pending`. When it is reached, a new connection evicts the oldest
//! pending one instead of being closed, so connections that never prove themselves cannot
//! lock out a client that can. Admitted connections have the cap `max_connections` of the
//! [`Limits`](crate::Limits). A connection that would exceed it is refused at admission.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// The reason [`Admission::admit`] rejected a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdmitError {
    /// `max_connections` connections are admitted already.
    Full { max_connections: usize },
    /// A newer connection evicted this one before it was admitted.
    Evicted,
}

/// The pending and admitted connections of one listener.
#[derive(Debug)]
pub(crate) struct PendingPool {
    max_pending: usize,
    max_admitted: usize,
    /// One permit per open connection, `max_pending + max_admitted` in all. The stats
    /// count the permits taken.
    permits: Arc<Semaphore>,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    next_id: u64,
    /// Oldest first.
    pending: VecDeque<Pending>,
    admitted: usize,
}

#[derive(Debug)]
struct Pending {
    id: u64,
    evict: oneshot::Sender<()>,
    permit: OwnedSemaphorePermit,
}

impl PendingPool {
    /// Makes a pool whose semaphore `permits` has `max_pending + max_admitted` permits.
    pub(crate) fn new(max_pending: usize, max_admitted: usize, permits: Arc<Semaphore>) -> Self {
        Self { max_pending, max_admitted, permits, state: Mutex::new(PoolState::default()) }
    }

    pub(crate) fn max_pending(&self) -> usize {
        self.max_pending
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().expect("the pending pool lock is never poisoned")
    }

    /// Counts a new connection as pending, evicting the oldest pending connection when
    /// `max_pending` are open. Returns `None` when no permit is free even so. The pool
    /// never lets more than `max_pending + max_admitted` connections hold permits, so that
    /// would take a semaphore shared with something else.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<Admission> {
        let mut state = self.state();
        if state.pending.len() >= self.max_pending {
            if let Some(oldest) = state.pending.pop_front() {
                // The evicted task ends at its next await, and logs its cut. Its permit is
                // free at once.
                let _ = oldest.evict.send(());
            }
        }
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        let id = state.next_id;
        state.next_id += 1;
        let (evict, evicted) = oneshot::channel();
        state.pending.push_back(Pending { id, evict, permit });
        let ticket = Ticket { pool: Arc::clone(self), id, evicted: Some(evicted), admitted: None };
        Some(Admission { ticket: Some(ticket) })
    }
}

/// A connection's place in its listener's caps. A listener without a pending cap admits
/// every connection at accept, and then [`admit`](Self::admit) does nothing.
#[derive(Debug)]
pub struct Admission {
    ticket: Option<Ticket>,
}

#[derive(Debug)]
struct Ticket {
    pool: Arc<PendingPool>,
    id: u64,
    /// Receives when a newer connection evicts this one. `None` once admitted.
    evicted: Option<oneshot::Receiver<()>>,
    /// The permit of an admitted connection.
    admitted: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// Returns an admission for a listener without a pending cap.
    pub(crate) fn unlimited() -> Self {
        Admission { ticket: None }
    }

    /// Returns true once the connection is admitted, and always on a listener without a
    /// pending cap.
    pub fn is_admitted(&self) -> bool {
        self.ticket.as_ref().is_none_or(|ticket| ticket.admitted.is_some())
    }

    /// Moves the connection from the pending cap to `max_connections`. Admitting an
    /// admitted connection does nothing.
    pub(crate) fn admit(&mut self) -> Result<(), AdmitError> {
        let Some(ticket) = self.ticket.as_mut() else { return Ok(()) };
        if ticket.admitted.is_some() {
            return Ok(());
        }
        let pool = Arc::clone(&ticket.pool);
        let mut state = pool.state();
        let index = state.pending.iter().position(|pending| pending.id == ticket.id).ok_or(AdmitError::Evicted)?;
        let pending = state.pending.remove(index).expect("the index was just found");
        if state.admitted >= pool.max_admitted {
            // Dropping `pending` frees its permit, and the caller closes the connection.
            return Err(AdmitError::Full { max_connections: pool.max_admitted });
        }
        state.admitted += 1;
        ticket.admitted = Some(pending.permit);
        ticket.evicted = None;
        Ok(())
    }

    /// Completes when a newer connection evicts this one while it is pending, and never
    /// otherwise. Cancel-safe.
    pub(crate) async fn evicted(&mut self) {
        let receiver = self.ticket.as_mut().and_then(|ticket| ticket.evicted.as_mut());
        match receiver {
            Some(receiver) => {
                if receiver.await.is_err() {
                    // The sender is gone without an eviction: the ticket left the pool
                    // some other way.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.pool.state();
        if self.admitted.is_some() {
            state.admitted -= 1;
        } else if let Some(index) = state.pending.iter().position(|pending| pending.id == self.id) {
            state.pending.remove(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_pending: usize, max_admitted: usize) -> Arc<PendingPool> {
        Arc::new(PendingPool::new(max_pending, max_admitted, Arc::new(Semaphore::new(max_pending + max_admitted))))
    }

    #[tokio::test]
    async fn new_connection_evicts_oldest_pending() {
        let pool = pool(2, 2);
        let mut first = pool.enter().unwrap();
        let mut second = pool.enter().unwrap();
        let not_yet = tokio::time::timeout(std::time::Duration::from_millis(20), first.evicted()).await;
        assert!(not_yet.is_err(), "evicted while below max_pending");

        let _third = pool.enter().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), first.evicted()).await.expect("the oldest is evicted");
        assert_eq!(first.admit(), Err(AdmitError::Evicted));
        assert_eq!(second.admit(), Ok(()), "a newer one stays");
        assert_eq!(pool.permits.available_permits(), 2, "one pending and one admitted connection hold permits");
    }

    #[tokio::test]
    async fn admitted_connections_are_not_evicted() {
        let pool = pool(1, 2);
        let mut admitted = pool.enter().unwrap();
        admitted.admit().unwrap();
        assert!(admitted.is_admitted());
        // Each new pending connection evicts the one before it, never the admitted one.
        let pending_connections: Vec<Admission> = (0..5).map(|_| pool.enter().unwrap()).collect();
        assert_eq!(pool.state().pending.len(), 1);
        assert_eq!(pending_connections.len(), 5);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), admitted.evicted()).await;
        assert!(waited.is_err(), "an admitted connection was evicted");
    }

    #[tokio::test]
    async fn admission_beyond_max_connections_fails() {
        let pool = pool(4, 1);
        let mut first = pool.enter().unwrap();
        let mut second = pool.enter().unwrap();
        assert_eq!(first.admit(), Ok(()));
        assert_eq!(second.admit(), Err(AdmitError::Full { max_connections: 1 }));
        assert_eq!(pool.permits.available_permits(), 4, "the refused connection freed its permit");

        drop(first);
        let mut third = pool.enter().unwrap();
        assert_eq!(third.admit(), Ok(()), "a closed connection frees its admitted slot");
    }

    #[test]
    fn dropped_tickets_free_their_place() {
        let pool = pool(2, 2);
        let pending = pool.enter().unwrap();
        let mut admitted = pool.enter().unwrap();
        admitted.admit().unwrap();
        assert_eq!(pool.permits.available_permits(), 2);
        drop(pending);
        drop(admitted);
        assert_eq!(pool.permits.available_permits(), 4);
        assert_eq!(pool.state().pending.len(), 0);
        assert_eq!(pool.state().admitted, 0);
        assert!(Admission::unlimited().is_admitted());
    }
}
