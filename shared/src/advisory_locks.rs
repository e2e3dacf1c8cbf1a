//! Every Postgres advisory lock key the project takes, in one place so that no two uses share a
//! key by accident.

/// The park flag. Writers' triggers take it shared for their transaction and skip the NOTIFY
/// while a parked invalidator holds it exclusively. The SQL writes the number into `cache_emit`
/// and every generated capture function, and `cache_park_lock_key()` returns it; a migration
/// test checks that each of them names this key.
pub const PARK: i64 = 7_273_730_001;

/// Held (session level) by the one invalidator replica that parks; the others only listen.
pub const PARK_LEADER: i64 = 7_273_730_002;

/// Held while migrating, so two runners never apply the same file.
pub const MIGRATION: i64 = 7_273_730_003;

/// Serialises the creation of the tests' template database across test processes.
pub const TEMPLATE: i64 = 7_273_730_004;
