//! Collapses concurrent misses on one key in this process into one database read. A reader joins
//! a read only when both started from the same state: the same versions in Redis (so no
//! invalidation, from any process, completed between the two lookups) and the same write epoch of
//! this process (so a client reads its own writes even when their invalidation was skipped).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::error::ApiError;

/// The result of a read, for every caller that joined it.
pub type FlightFuture<T> = Shared<BoxFuture<'static, Result<T, ApiError>>>;

struct Flight<T, S> {
    id: u64,
    /// The write epoch when the flight started.
    epoch: u64,
    /// What the leader saw before it read (for the cache, its lookup's snapshot of the versions).
    started_from: S,
    /// Set when a caller joins; read by the flight's [`Seat::leave`].
    joined: Arc<AtomicBool>,
    future: FlightFuture<T>,
}

type Flights<T, S> = Arc<Mutex<HashMap<String, Flight<T, S>>>>;

/// The table of in-flight reads, by entry key.
pub struct SingleFlight<T, S> {
    flights: Flights<T, S>,
    next_flight: AtomicU64,
    /// Bumped after every write this process commits.
    write_epoch: AtomicU64,
    /// How long a read may run: past it no caller is still waiting (the request timeout), and a
    /// read hung on a silent connection must not keep its key for the callers that come later.
    longest_read: Duration,
}

/// Whether a caller started the read or joined one already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

impl<T: Clone + Send + Sync + 'static, S: PartialEq + Send + 'static> SingleFlight<T, S> {
    pub fn new(longest_read: Duration) -> Self {
        Self { flights: Arc::default(), next_flight: AtomicU64::new(0), write_epoch: AtomicU64::new(0), longest_read }
    }

    /// Marks a committed write: reads started before it are no longer joined.
    pub fn write_committed(&self) {
        self.write_epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Joins the read of `key` that runs from `started_from` in the current write epoch when
    /// there is one, otherwise starts `read` as a task of its own (it completes, or is given up
    /// after `longest_read`, and leaves the table, even when every caller goes away or it
    /// panics). `read` gets its [`Seat`], to say when it goes on from another state. Returns
    /// the caller's role at once and the read's result to await.
    pub fn join<F>(&self, key: String, started_from: S, read: impl FnOnce(Seat<T, S>) -> F) -> (Role, FlightFuture<T>)
    where
        F: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let epoch = self.write_epoch.load(Ordering::SeqCst);
        let (future, role) = {
            let mut flights = lock(&self.flights);
            match flights.get(&key) {
                Some(flight) if flight.epoch == epoch && flight.started_from == started_from => {
                    flight.joined.store(true, Ordering::SeqCst);
                    (flight.future.clone(), Role::Follower)
                }
                _ => {
                    let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
                    let joined = Arc::new(AtomicBool::new(false));
                    let seat =
                        || Seat { table: Arc::clone(&self.flights), key: key.clone(), id, joined: Arc::clone(&joined) };
                    let (landing, read) = (Landing(seat()), read(seat()));
                    let longest_read = self.longest_read;
                    let task = tokio::spawn(async move {
                        let _landing = landing;
                        tokio::time::timeout(longest_read, read).await.unwrap_or_else(|_| {
                            tracing::warn!(?longest_read, "a cache miss's read was given up");
                            Err(ApiError::unavailable("the read took longer than a request may"))
                        })
                    });
                    let future = async move {
                        task.await.unwrap_or_else(|error| {
                            tracing::error!(%error, "cache miss task failed");
                            Err(ApiError::internal())
                        })
                    }
                    .boxed()
                    .shared();
                    flights.insert(key, Flight { id, epoch, started_from, joined, future: future.clone() });
                    (future, Role::Leader)
                }
            }
        };
        (role, future)
    }
}

/// A flight's place in the table, held by its read.
pub struct Seat<T, S> {
    table: Flights<T, S>,
    key: String,
    id: u64,
    joined: Arc<AtomicBool>,
}

impl<T, S> Seat<T, S> {
    /// The read goes on from `state` now (for the cache, the versions it created): callers that
    /// start from it join; those that saw the state before no longer do.
    pub fn now_from(&self, state: S) {
        if let Some(flight) = lock(&self.table).get_mut(&self.key).filter(|flight| flight.id == self.id) {
            flight.started_from = state;
        }
    }

    /// Takes the read out of the table, so that no caller joins it from now on, and says whether
    /// any caller joined it before. A read that goes on after this serves every caller that
    /// joined with a database read that starts after they did.
    pub fn leave(&self) -> bool {
        let mut flights = lock(&self.table);
        if flights.get(&self.key).is_some_and(|flight| flight.id == self.id) {
            flights.remove(&self.key);
        }
        self.joined.load(Ordering::SeqCst)
    }
}

/// Takes a flight out of the table when its task ends, however it ends (a later flight under
/// the same key stays).
struct Landing<T, S>(Seat<T, S>);

impl<T, S> Drop for Landing<T, S> {
    fn drop(&mut self) {
        let Seat { table, key, id, .. } = &self.0;
        let mut flights = lock(table);
        if flights.get(key).is_some_and(|flight| flight.id == *id) {
            flights.remove(key);
        }
    }
}

fn lock<T>(flights: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    flights.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    const READ: Duration = Duration::from_millis(50);

    /// A table of reads of key `k` that count their runs and answer 7 after [`READ`].
    struct Table {
        flights: SingleFlight<u32, &'static str>,
        runs: Arc<AtomicUsize>,
    }

    impl Table {
        fn new(longest_read: Duration) -> Self {
            Self { flights: SingleFlight::new(longest_read), runs: Arc::default() }
        }

        /// Joins (or starts) the counted read of `k` from `state`.
        fn join(&self, state: &'static str) -> (Role, FlightFuture<u32>) {
            let runs = Arc::clone(&self.runs);
            self.flights.join("k".into(), state, move |_| async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(READ).await;
                Ok(7)
            })
        }

        fn runs(&self) -> usize {
            self.runs.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn concurrent_reads_of_one_key_share_one_run_until_a_write_commits() {
        let table = Table::new(Duration::from_secs(10));
        let ((first_role, first), (second_role, second)) = (table.join("v1"), table.join("v1"));
        assert_eq!((first_role, second_role), (Role::Leader, Role::Follower));
        assert_eq!((first.await.unwrap(), second.await.unwrap()), (7, 7));
        assert_eq!(table.runs(), 1);

        let (_, before_write) = table.join("v1");
        table.flights.write_committed();
        let (role, after_write) = table.join("v1");
        assert_eq!(role, Role::Leader, "a read after a write does not join an older one");
        assert_eq!((before_write.await.unwrap(), after_write.await.unwrap()), (7, 7));
        assert_eq!(table.runs(), 3);
    }

    #[tokio::test]
    async fn a_read_that_started_from_other_versions_is_not_joined() {
        let table = Table::new(Duration::from_secs(10));
        let (_, before) = table.join("v1");
        let (role, after) = table.join("v2");
        assert_eq!(role, Role::Leader, "another process's invalidation came between the two lookups");
        let (role, third) = table.join("v2");
        assert_eq!(role, Role::Follower, "the newest read is joined");
        assert_eq!((before.await.unwrap(), after.await.unwrap(), third.await.unwrap()), (7, 7, 7));
        assert_eq!(table.runs(), 2);
    }

    #[tokio::test]
    async fn a_read_that_goes_on_from_new_versions_is_joined_from_them() {
        let table = Table::new(Duration::from_secs(10));
        let restated = Arc::new(tokio::sync::Notify::new());
        let signal = Arc::clone(&restated);
        let (_, leader) = table.flights.join("k".into(), "absent", move |seat| async move {
            seat.now_from("created");
            signal.notify_one();
            tokio::time::sleep(READ).await;
            Ok(7)
        });
        restated.notified().await;
        let (role, joined) = table.join("created");
        assert_eq!(role, Role::Follower, "a caller that saw the created versions joins");
        let (role, other) = table.join("absent");
        assert_eq!(role, Role::Leader, "the state the read left is not joined");
        assert_eq!((leader.await.unwrap(), joined.await.unwrap(), other.await.unwrap()), (7, 7, 7));
        assert_eq!(table.runs(), 1, "only `other` ran the counted read");
    }

    #[tokio::test]
    async fn a_read_that_leaves_the_table_is_joined_no_more_and_knows_whether_it_was() {
        let table = Table::new(Duration::from_secs(10));
        let (go, left) = (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
        let leaving = |go: Arc<tokio::sync::Notify>, left: Arc<tokio::sync::Notify>| {
            move |seat: Seat<u32, &'static str>| async move {
                go.notified().await;
                let joined = seat.leave();
                left.notify_one();
                Ok(u32::from(joined))
            }
        };
        let (_, leader) = table.flights.join("k".into(), "absent", leaving(Arc::clone(&go), Arc::clone(&left)));
        let (role, follower) = table.join("absent");
        assert_eq!(role, Role::Follower);
        go.notify_one();
        left.notified().await;
        let (role, after) = table.join("absent");
        assert_eq!(role, Role::Leader, "a read that left is not joined");
        assert_eq!((leader.await.unwrap(), follower.await.unwrap(), after.await.unwrap()), (1, 1, 7));

        let (_, alone) = table.flights.join("k".into(), "absent", leaving(Arc::clone(&go), Arc::clone(&left)));
        go.notify_one();
        assert_eq!(alone.await.unwrap(), 0, "nobody joined this one");
    }

    #[tokio::test]
    async fn a_read_that_panics_or_hangs_leaves_its_key_to_the_next_caller() {
        let table = Table::new(Duration::from_millis(200));
        let (_, panicked) = table.flights.join("k".into(), "v1", |_| async { panic!("a loader's bug") });
        assert!(panicked.await.is_err());
        let (role, next) = table.join("v1");
        assert_eq!(role, Role::Leader, "the panicked read left the table");
        assert_eq!(next.await.unwrap(), 7);

        let (_, hung) = table.flights.join("k".into(), "v1", |_| std::future::pending());
        assert!(matches!(hung.await, Err(ApiError::Unavailable(_))), "given up after the longest read");
        let (role, next) = table.join("v1");
        assert_eq!(role, Role::Leader, "the hung read left the table");
        assert_eq!(next.await.unwrap(), 7);
    }
}
