//! Collapses concurrent misses on one key in this process into one database read. A read that
//! started before this process committed a write is not joined by readers that came after it,
//! so a client reads its own writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::error::ApiError;

/// The result of a read, for every caller that joined it.
pub type FlightFuture<T> = Shared<BoxFuture<'static, Result<T, ApiError>>>;

struct Flight<T> {
    id: u64,
    /// The write epoch when the flight started.
    epoch: u64,
    future: FlightFuture<T>,
}

/// The table of in-flight reads, by entry key.
pub struct SingleFlight<T> {
    flights: Arc<Mutex<HashMap<String, Flight<T>>>>,
    next_flight: AtomicU64,
    /// Bumped after every write this process commits.
    write_epoch: AtomicU64,
}

/// Whether a caller started the read or joined one already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    pub fn new() -> Self {
        Self { flights: Arc::default(), next_flight: AtomicU64::new(0), write_epoch: AtomicU64::new(0) }
    }

    /// Marks a committed write: reads started before it are no longer joined.
    pub fn write_committed(&self) {
        self.write_epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Joins the read of `key` from the current write epoch when there is one, otherwise starts
    /// `read` as a task of its own (it completes, and leaves the table, even when every caller
    /// goes away). Returns the caller's role at once and the read's result to await.
    pub fn join(
        &self,
        key: String,
        read: impl Future<Output = Result<T, ApiError>> + Send + 'static,
    ) -> (Role, FlightFuture<T>) {
        let epoch = self.write_epoch.load(Ordering::SeqCst);
        let (future, role) = {
            let mut flights = lock(&self.flights);
            match flights.get(&key) {
                Some(flight) if flight.epoch == epoch => (flight.future.clone(), Role::Follower),
                _ => {
                    let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
                    let table = Arc::clone(&self.flights);
                    let flight_key = key.clone();
                    let task = tokio::spawn(async move {
                        let result = read.await;
                        let mut flights = lock(&table);
                        if flights.get(&flight_key).is_some_and(|flight| flight.id == id) {
                            flights.remove(&flight_key);
                        }
                        result
                    });
                    let future = async move {
                        task.await.unwrap_or_else(|error| {
                            tracing::error!(%error, "cache miss task failed");
                            Err(ApiError::internal())
                        })
                    }
                    .boxed()
                    .shared();
                    flights.insert(key, Flight { id, epoch, future: future.clone() });
                    (future, Role::Leader)
                }
            }
        };
        (role, future)
    }
}

fn lock<T>(flights: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    flights.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_reads_of_one_key_share_one_run_until_a_write_commits() {
        let flights = SingleFlight::<u32>::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let read = |runs: Arc<AtomicUsize>| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(7)
        };
        let (first_role, first) = flights.join("k".into(), read(runs.clone()));
        let (second_role, second) = flights.join("k".into(), read(runs.clone()));
        assert_eq!((first_role, second_role), (Role::Leader, Role::Follower));
        assert_eq!((first.await.unwrap(), second.await.unwrap()), (7, 7));
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        let (_, before_write) = flights.join("k".into(), read(runs.clone()));
        flights.write_committed();
        let (role, after_write) = flights.join("k".into(), read(runs.clone()));
        assert_eq!(role, Role::Leader, "a read after a write does not join an older one");
        assert_eq!((before_write.await.unwrap(), after_write.await.unwrap()), (7, 7));
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
