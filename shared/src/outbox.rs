//! The outbox contract between the writers and the invalidator, as SQL: where a write's own rows
//! start (read-your-writes), the claim and dead letter of the invalidator's batches (a claim is
//! acknowledged by committing it; it moves held tenants' events aside), the backlog, and the
//! LISTEN / park protocol of the listener. The tables, triggers and functions these name are in
//! `migrations/sql/`.

/// Notes, inside a write transaction, where its outbox rows will start, for [`OWN_ROWS`].
pub const NOTE_POSITION: &str = "SELECT set_config('openrisk.outbox_position', cache_outbox_position()::text, true)";

/// The outbox rows the current transaction's own triggers wrote (same transaction id, ids past
/// the position [`NOTE_POSITION`] noted: a short primary-key range, no txid index), read just
/// before its commit so the writer can invalidate them at once. The rows stay in the outbox
/// for the invalidator, which remains the source of truth.
pub const OWN_ROWS: &str = "
    SELECT tenant_id, tags FROM cache_outbox
    WHERE id > coalesce(nullif(current_setting('openrisk.outbox_position', true), '')::bigint, 0)
      AND txid = pg_current_xact_id()";

/// The columns [`CLAIM`] reads of each outbox row `o` (see [`CLAIM`] for why each is computed as
/// it is).
macro_rules! outbox_row_columns {
    () => {
        "o.id, o.tenant_id, o.table_name, o.op,
                  CASE WHEN array_ndims(o.tags) > 1 THEN ARRAY(SELECT tag FROM unnest(o.tags) tag WHERE tag IS NOT NULL)
                       ELSE array_remove(o.tags, NULL) END AS tags, o.txid,
                  CASE WHEN o.created_at BETWEEN '0001-01-01 00:00Z' AND '9999-12-31 23:59Z' THEN o.created_at
                       ELSE clock_timestamp() END AS created_at,
                  CASE WHEN current_setting('track_commit_timestamp')::boolean
                       THEN pg_xact_commit_timestamp(o.xmin) END AS committed_at"
    };
}

/// The same columns of an event moved aside (see [`CLAIM`]), read as `outbox_row_columns` read it
/// before it moved.
macro_rules! held_row_columns {
    () => {
        "o.id, o.tenant_id, o.table_name, o.op, o.tags, o.txid, o.created_at, o.committed_at"
    };
}

/// What [`CLAIM`] and [`PEEK`] return of each row `c`.
macro_rules! batch_columns {
    () => {
        "
    SELECT c.id, c.tenant_id, c.table_name, c.op, c.tags, c.txid::text AS txid, c.created_at,
           EXISTS (SELECT 1 FROM cache_watches w WHERE c.table_name = w.table_name::text OR c.table_name = ANY (w.events_named)) AS watched,
           extract(epoch FROM clock_timestamp() - coalesce(c.committed_at, c.created_at))::float8 AS age_seconds,
           extract(epoch FROM c.committed_at - c.created_at)::float8 AS in_transaction_seconds,
           pg_current_wal_insert_lsn()::text AS wal_position"
    };
}

/// Claims the oldest unclaimed events by deleting them inside the caller's transaction: the
/// deletion commits only after Redis confirmed (the acknowledgement), a rollback or a replica
/// that dies mid-batch restores them, and `SKIP LOCKED` keeps replicas off each other's rows.
/// One pass over each row (no separate lock-then-delete) keeps the cost per event low.
///
/// The events it meets of the tenants in `$2` (those the replica holds back after their
/// invalidations failed) move aside, into `cache_outbox_held`, in the same statement: they are
/// returned flagged `moved_aside`, not to be applied by this batch, and commit or roll back with
/// it. So no claim walks past a held backlog (it grows only in `cache_outbox_held`, read by
/// tenant), and it still waits to be applied: the claim also takes back, up to `$1` of them, the
/// events moved aside of every tenant not in `$2` (a tenant a probe cleared, or one that another
/// replica held, or held and died), and deletes them the same way once Redis confirmed. The
/// tenants waiting there are listed by a loose scan of its index (one probe per tenant), so
/// taking none back costs a claim one probe per held tenant, however many events wait.
///
/// `$2` is read as a set (`IN (SELECT unnest($2))`), which Postgres hashes once per claim. As
/// `= ANY ($2)` and `<> ALL ($2)` under the generic plan it was compared element by element for
/// every tenant listed and every row claimed: with 5,000 tenants held a claim took 79 ms, and
/// takes 18 now (`load_tests/held_tenants_claim.sh`; one probe per held tenant is what is left),
/// while a replica that holds tenants claims whenever one of their probes comes due.
///
/// The ids are picked once, as an array (an init plan, run once), and the deletion finds them
/// by primary key. Two other forms went wrong. As `id IN (SELECT … LIMIT $1 FOR UPDATE SKIP
/// LOCKED)` the planner may choose a nested-loop semi-join that re-runs the subquery for every
/// outbox row, each run skipping the rows already deleted: the statement then claims the whole
/// outbox in one batch (ignoring the limit) in quadratic time. It did on an outbox whose
/// statistics still said "empty" when an outage had filled it (deployment/live.sh: 6000 rows
/// took a minute). Joined to a materialised CTE of the ids, the deletion was planned as a hash
/// join over a sequential scan whenever the limit exceeded the rows the statistics expected:
/// every claim then read the whole heap, dead rows included, so claims grew slower as claimed
/// rows awaited vacuum (1 ms and 348 buffers for 2 rows beside 80,000 dead ones, against 0.15 ms
/// and 16 buffers now). Dead rows that some snapshot can still see (vacuum held back by a long
/// transaction) still cost each claim a visit through the index until vacuum removes them.
///
/// `wal_position` is the primary's WAL insert position read by this statement, whose snapshot
/// already sees the claimed rows: their writes' commit records end before it (a trigger's own
/// position would not do, as it precedes its transaction's commit record). Read replicas use
/// it as the replay floor of the versions this batch writes (see [`crate::protocol`]).
///
/// `age_seconds` counts from the writer's commit where the server records commit times
/// (`track_commit_timestamp = on`; an event moved aside keeps it in `committed_at`): before it no
/// reader can see the change, so no cached entry is stale yet. Otherwise, and for a transaction
/// whose commit time is no longer kept, it counts from the row change (`created_at`), which adds
/// the rest of the writer's transaction. `in_transaction_seconds` is that rest (row change to
/// commit) where it is known, else null.
///
/// Rows written around the triggers are read so that no value fails to decode or to subtract:
/// null tags are dropped, tags in more than one dimension are read as one list (`array_remove`
/// refuses such an array), and a `created_at` outside years 1–9999 (`infinity`) reads as the
/// claim's own time. Such a row would otherwise fail every claim, on every replica, until removed
/// by hand. An event moves aside as it reads so.
pub const CLAIM: &str = concat!(
    "
    WITH RECURSIVE claimed AS (
        DELETE FROM cache_outbox o
        WHERE o.id = ANY (ARRAY(SELECT id FROM cache_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))
        RETURNING ",
    outbox_row_columns!(),
    "),
    moved AS (
        INSERT INTO cache_outbox_held (id, tenant_id, table_name, op, tags, txid, created_at, committed_at)
        SELECT id, tenant_id, table_name, op, tags, txid, created_at, committed_at
        FROM claimed WHERE tenant_id IN (SELECT unnest($2::uuid[]))),
    aside (tenant_id) AS (
        (SELECT tenant_id FROM cache_outbox_held ORDER BY tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT h.tenant_id FROM cache_outbox_held h WHERE h.tenant_id > a.tenant_id ORDER BY h.tenant_id LIMIT 1)
        FROM aside a WHERE a.tenant_id IS NOT NULL),
    taken_back AS (
        DELETE FROM cache_outbox_held o
        WHERE o.id = ANY (ARRAY(SELECT id FROM cache_outbox_held
                                WHERE tenant_id = ANY (ARRAY(SELECT tenant_id FROM aside
                                                             WHERE tenant_id IS NOT NULL
                                                               AND tenant_id NOT IN (SELECT unnest($2::uuid[]))))
                                LIMIT $1 FOR UPDATE SKIP LOCKED))
        RETURNING ",
    held_row_columns!(),
    ")",
    batch_columns!(),
    ",
           c.moved_aside
    FROM (SELECT *, tenant_id IN (SELECT unnest($2::uuid[])) AS moved_aside FROM claimed
          UNION ALL
          SELECT *, false FROM taken_back) c
    ORDER BY c.id"
);

/// Reads, without claiming them, the events moved aside (see [`CLAIM`]) of the tenants in `$1`
/// by transactions at or past the matching id in `$2` (same length; `xid8` as text), in the
/// columns of [`CLAIM`] plus `snapshot_xmin`. The invalidator reads so the events of the tenants
/// it holds back because no Redis replica confirmed their invalidations, moved aside since the
/// last read (by its own claim, in the same transaction, or by another replica's), and applies
/// them on the master alone: reads stay fresh while the events wait for a replica. Every
/// transaction before `snapshot_xmin` had ended when this read was taken, so a later read from
/// there misses no event; it reads again those moved by transactions that were still running. No
/// limit: a limit would have to stop inside one transaction's rows, and a position by
/// transaction could not move past them. Indexed by tenant and mover, so a read costs what it
/// returns and not the held backlog: a lookup per tenant, kept one by `OFFSET 0` (without it the
/// planner joins the tenants to every event aside of theirs once it knows how many there are,
/// and filters by mover after), in no order (sorted by id, it walked the primary key instead).
pub const PEEK: &str = concat!(
    "
    WITH peeked AS (
        SELECT o.*
        FROM unnest($1::uuid[], $2::text[]) AS seen (tenant_id, since)
        CROSS JOIN LATERAL (SELECT ",
    held_row_columns!(),
    "
                            FROM cache_outbox_held o
                            WHERE o.tenant_id = seen.tenant_id AND o.moved_by >= seen.since::xid8
                            OFFSET 0) o)",
    batch_columns!(),
    ",
           pg_snapshot_xmin(pg_current_snapshot())::text AS snapshot_xmin
    FROM peeked c"
);

/// Settings of a claim's transaction, sent with each claim in the same round trip (with
/// [`IDLE_BY_DESIGN`]). `SET LOCAL`, so that they end with the transaction: a session that keeps
/// a setting would hand it, through a transaction pooler, to whichever client gets its server
/// connection next (an API writer whose commits would then not wait for their flush).
///
/// `synchronous_commit = off`: an acknowledgement (the commit of a batch's deletion) does not
/// wait for its WAL flush, so the next claim starts sooner. A crash can lose only
/// acknowledgements not yet flushed; their events come back and are applied again, and
/// invalidating a tag twice leaves the cache as invalidating it once does.
///
/// `plan_cache_mode = force_generic_plan`: the prepared [`CLAIM`] is planned once per session
/// instead of once per claim. Postgres reads the mode at each execution.
///
/// `enable_seqscan = off`: that one plan must find rows by index whatever the statistics said
/// when it was made. Made while `cache_outbox_held` was empty, it scanned the whole table four
/// times per claim once an outage had moved 100,000 events there (6,900 buffers and 44 ms a claim
/// against 26 buffers, until autovacuum analysed the table). Only `cache_watches` is still read by
/// a sequential scan (no index serves its match), and `jit = off` keeps the cost that the setting
/// charges that scan from compiling the claim on every execution (0.6 s a claim).
pub const CLAIMING_TRANSACTION: &str = "
    SET LOCAL synchronous_commit = off; SET LOCAL plan_cache_mode = force_generic_plan;
    SET LOCAL enable_seqscan = off; SET LOCAL jit = off";

/// A transaction of the invalidator that idles by design: the park leader's wake-up transaction
/// until the wake-up (up to the poll interval), a batch's while Redis answers (up to the Redis
/// timeouts). Both are bounded by the replica's own settings, so a server or role default that
/// ends idle transactions sooner (`idle_in_transaction_session_timeout`) would only end the
/// replica's session under every park or batch. `SET LOCAL`, as [`CLAIMING_TRANSACTION`] is.
pub const IDLE_BY_DESIGN: &str = "SET LOCAL idle_in_transaction_session_timeout = 0";

/// Moves a poison row (one no invalidation can be made of) aside, with the reason, inside the
/// claiming transaction.
pub const DEAD_LETTER: &str = "
    INSERT INTO cache_outbox_dead_letter (id, tenant_id, table_name, op, tags, txid, created_at, reason)
    VALUES ($1, $2, $3, $4, $5, $6::text::xid8, $7, $8)
    ON CONFLICT (id) DO NOTHING";

/// Size of the outbox (the events moved aside included) and age of its oldest event (zero when
/// empty), by the database's clock. Its count is what "the outbox has drained" means to the
/// tests, benchmarks and verifier too.
///
/// Ages count from each event's commit where the server records commit times, as
/// [`CLAIM`]'s `age_seconds` does, else from the row change: a transaction held open for minutes
/// (a batch import) must not look minutes stale, page, and turn `/readyz` to "not caught up" the
/// moment it commits. Reading a commit time costs a lookup per outbox row, which the `count(*)`
/// beside it already visits.
pub const BACKLOG: &str = "
    SELECT count(*),
           coalesce(extract(epoch FROM clock_timestamp() - min(coalesce(committed_at, created_at))
                    FILTER (WHERE isfinite(created_at)))::float8, 0)
    FROM (SELECT CASE WHEN current_setting('track_commit_timestamp')::boolean
                      THEN pg_xact_commit_timestamp(xmin) END AS committed_at, created_at
          FROM cache_outbox
          UNION ALL
          SELECT committed_at, created_at FROM cache_outbox_held) pending";

/// The channel writers notify while a replica is parked, and the session's own backend process.
pub const NOTIFY_CHANNEL: &str = "SELECT cache_notify_channel(), pg_backend_pid()";

/// Whether backend `$1` has exited. A killed backend sends its client the error before it
/// releases its session locks; they are released by the time it leaves `pg_stat_activity`.
pub const BACKEND_GONE: &str = "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)";

/// Becomes the park leader if no replica is (`$1`: [`crate::advisory_locks::PARK_LEADER`]).
pub const TRY_LEAD: &str = "SELECT pg_try_advisory_lock($1)";

/// Gives up the park leadership (`$1`: [`crate::advisory_locks::PARK_LEADER`]) and wakes every
/// replica, so that one that can apply takes the lead and parks: while a leader that cannot apply
/// (Redis unreachable from it) keeps the lock, no replica parks, writers notify nobody, and every
/// write waits for a poll.
pub const RESIGN: &str = "SELECT pg_advisory_unlock($1), pg_notify(cache_notify_channel(), '')";

/// Wakes every replica: events this one let go of (a failed batch's, rolled back; a claim's moved
/// aside, for a replica that can apply them) are free for another, which would otherwise find
/// them only at its poll if it is parked. Sent inside a claim's transaction, it is delivered at
/// the commit, so never before the events are free.
pub const WAKE_ALL: &str = "SELECT pg_notify(cache_notify_channel(), '')";

/// Takes the park lock exclusively: from then on writers notify.
pub const PARK: &str = "SELECT pg_advisory_lock(cache_park_lock_key())";

/// Releases the park lock: writers stop notifying.
pub const UNPARK: &str = "SELECT pg_advisory_unlock(cache_park_lock_key())";
