-- The events of a tenant that an invalidator replica holds back move aside, out of cache_outbox.
--
-- A replica holds a tenant back when its Redis master is down, or answers without a replica that
-- confirms. Until now the tenant's events stayed in cache_outbox, the oldest rows there, and every
-- claim of every replica walked the primary key past them; while the tenant waited for a replica,
-- every claim also read the whole outbox for its new events. Both grew with the held backlog: at
-- 100,000 held events each batch of every tenant paid about 70 ms (load_tests/RESULTS.md).
--
-- Now the claim that meets a held tenant's events moves them here in the same statement, so they
-- leave cache_outbox at once and the claim's walk stays as short as the unheld backlog. They are
-- still pending: a claim takes them back (and deletes them once Redis confirmed) for any tenant
-- its replica does not hold, so a replica that dies holding a tenant strands nothing, and the
-- move commits or rolls back with the claim's deletion. The new events of a tenant held for its
-- replicas are read here by the transaction that moved them (moved_by), through an index that no
-- writer pays for.
CREATE TABLE cache_outbox_held (
    id           bigint PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    table_name   text NOT NULL,
    op           text NOT NULL,
    tags         text[] NOT NULL,
    txid         xid8 NOT NULL,
    created_at   timestamptz NOT NULL,
    -- The writer's commit time when the server records commit times (the age of a claimed
    -- event counts from it); moving the row aside loses the original xmin.
    committed_at timestamptz,
    moved_by     xid8 NOT NULL DEFAULT pg_current_xact_id()
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 5000);
CREATE INDEX cache_outbox_held_by_tenant ON cache_outbox_held (tenant_id, moved_by);

-- Every event not yet applied, wherever it waits: what "the outbox is empty" means to anyone
-- who watches the invalidator from outside (tests, the verifier, the backlog gauge).
CREATE VIEW cache_outbox_pending AS
    SELECT id, tenant_id, table_name, op, tags, txid, created_at FROM cache_outbox
    UNION ALL
    SELECT id, tenant_id, table_name, op, tags, txid, created_at FROM cache_outbox_held;
