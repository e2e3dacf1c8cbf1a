-- The outbox loses its txid index, the largest cost left in a writer's trigger.
--
-- Measured with pgbench (16 writers, single-row UPDATEs, 6 alternated rounds): the same 0005
-- trigger kept 74 % of the trigger-less throughput writing to cache_outbox and 79 % writing to an
-- outbox without this index, level with a bare INSERT into a two-column table (see
-- load_tests/RESULTS.md). The index served one query only: the API finding its own
-- transaction's rows for read-your-writes. The API now notes the outbox sequence's position when
-- its transaction begins and reads `id > that position AND txid = pg_current_xact_id()`, a range
-- of the primary key that holds only rows written since. This relies on ids being handed out in
-- order, so the identity must keep CACHE 1 (the default).
DROP INDEX cache_outbox_txid_idx;

-- Where a transaction's own outbox rows start: every id its triggers take is greater than this.
CREATE FUNCTION cache_outbox_position() RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('cache_outbox', 'id')::regclass), 0)
$$;
