-- Trigger-driven cache invalidation: a durable outbox plus a rare LISTEN/NOTIFY wake-up.
--
-- A committed change to a watched table leaves rows in cache_outbox (written in the writer's own
-- transaction, so they exist exactly when the change does). The invalidator drains them. NOTIFY
-- only wakes an invalidator that is parked: pg_notify makes every notifying commit take a
-- database-wide lock, which cuts write throughput to about a third, so a busy invalidator must
-- not cause any.
--
-- The parked flag is an advisory lock (key 7273730001):
--   * a parked invalidator holds it exclusively (session level) while it waits for a wake-up;
--   * a writer tries to take it shared for the rest of its transaction. Success means nobody is
--     parked, and the shared hold keeps anyone from parking until the writer commits, so the
--     parking invalidator's final "is the outbox empty?" check runs after that commit and sees
--     the row. Failure means somebody is parked (or about to be): the writer notifies.
-- So no write slips in unseen while an invalidator parks, and nobody pays for NOTIFY while every
-- invalidator is busy.

-- Tables whose changes invalidate the cache, and how one of their rows maps to a tenant and tags.
CREATE TABLE cache_watches (
    table_name   regclass PRIMARY KEY,
    tenant_expr  text NOT NULL,
    tags_expr    text NOT NULL,
    watched_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per changed row (or per tenant for TRUNCATE); deleted once Redis confirmed.
CREATE TABLE cache_outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    table_name  text NOT NULL,
    op          text NOT NULL,
    tags        text[] NOT NULL,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    -- When the row changed (clock time inside the writer's transaction, at or before its commit).
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 5000);
CREATE INDEX cache_outbox_txid_idx ON cache_outbox (txid);

-- Events the invalidator could not apply (unknown table, malformed tags): kept for a human.
CREATE TABLE cache_outbox_dead_letter (
    id          bigint PRIMARY KEY,
    tenant_id   uuid,
    table_name  text,
    op          text,
    tags        text[],
    txid        xid8,
    created_at  timestamptz,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL
);

CREATE FUNCTION cache_notify_channel() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 'openrisk_cache_wakeup'::text $$;

CREATE FUNCTION cache_park_lock_key() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 7273730001::bigint $$;

-- Records one invalidation event and wakes a parked invalidator, if any (see the header).
CREATE FUNCTION cache_emit(p_table text, p_op text, p_tenant uuid, p_tags text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    p_tags := array_remove(p_tags, NULL);
    IF cardinality(p_tags) = 0 THEN
        RETURN;
    END IF;
    IF p_tenant IS NULL THEN
        RAISE EXCEPTION 'cache_emit: % row maps to no tenant; fix its cache_watch tenant expression', p_table;
    END IF;
    INSERT INTO cache_outbox (tenant_id, table_name, op, tags) VALUES (p_tenant, p_table, p_op, p_tags);
    IF NOT pg_try_advisory_xact_lock_shared(7273730001) THEN
        PERFORM pg_notify('openrisk_cache_wakeup', '');
    END IF;
END
$$;

-- Puts a table under invalidation: one call in a migration, no invalidator change.
--   p_tenant_expr: SQL expression over the row alias r giving its tenant uuid (e.g. 'r.tenant_id');
--   p_tags_expr:   SQL expression over r giving the text[] of tags it invalidates
--                  (e.g. $$ARRAY['risk:' || r.risk_id, 'mitigations']$$). NULL elements are dropped.
-- Both are evaluated for OLD and NEW: an UPDATE that moves a row to another parent invalidates
-- both parents, and one that moves it to another tenant emits one event per tenant. An UPDATE
-- that changes no column emits nothing; TRUNCATE invalidates everything ('all') of every tenant
-- that had rows. Calling it again replaces the previous definition.
CREATE FUNCTION cache_watch(p_table regclass, p_tenant_expr text, p_tags_expr text) RETURNS void
LANGUAGE plpgsql AS $watch$
DECLARE
    capture_fn text := format('%I', 'cache_capture_' || (SELECT relname FROM pg_class WHERE oid = p_table));
BEGIN
    -- Fail here, not at the first write, when an expression does not fit the table.
    EXECUTE format('SELECT (%s)::uuid, (%s)::text[] FROM %s AS r LIMIT 0', p_tenant_expr, p_tags_expr, p_table);

    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger LANGUAGE plpgsql AS $body$
        #variable_conflict use_column
        DECLARE
            r %2$s;
            old_tenant uuid;
            new_tenant uuid;
            old_tags text[];
            new_tags text[];
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                PERFORM cache_emit(%3$L, 'TRUNCATE', t.tenant, ARRAY['all'])
                FROM (SELECT DISTINCT (%4$s) AS tenant FROM %2$s AS r) AS t;
                RETURN NULL;
            END IF;
            IF TG_OP = 'UPDATE' AND OLD IS NOT DISTINCT FROM NEW THEN
                RETURN NULL;
            END IF;
            IF TG_OP <> 'INSERT' THEN
                r := OLD;
                old_tenant := (%4$s);
                old_tags := (%5$s);
            END IF;
            IF TG_OP <> 'DELETE' THEN
                r := NEW;
                new_tenant := (%4$s);
                new_tags := (%5$s);
            END IF;
            IF TG_OP = 'UPDATE' AND old_tenant IS NOT DISTINCT FROM new_tenant THEN
                IF old_tags IS DISTINCT FROM new_tags THEN
                    new_tags := old_tags || new_tags;
                END IF;
                PERFORM cache_emit(%3$L, TG_OP, new_tenant, new_tags);
            ELSE
                IF TG_OP <> 'INSERT' THEN
                    PERFORM cache_emit(%3$L, TG_OP, old_tenant, old_tags);
                END IF;
                IF TG_OP <> 'DELETE' THEN
                    PERFORM cache_emit(%3$L, TG_OP, new_tenant, new_tags);
                END IF;
            END IF;
            RETURN NULL;
        END
        $body$
    $fn$, capture_fn, p_table, p_table::text, p_tenant_expr, p_tags_expr);

    EXECUTE format('DROP TRIGGER IF EXISTS cache_capture ON %s', p_table);
    EXECUTE format('CREATE TRIGGER cache_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION %s()', p_table, capture_fn);
    EXECUTE format('DROP TRIGGER IF EXISTS cache_capture_truncate ON %s', p_table);
    EXECUTE format('CREATE TRIGGER cache_capture_truncate BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %s()', p_table, capture_fn);

    INSERT INTO cache_watches (table_name, tenant_expr, tags_expr) VALUES (p_table, p_tenant_expr, p_tags_expr)
    ON CONFLICT (table_name) DO UPDATE
        SET tenant_expr = EXCLUDED.tenant_expr, tags_expr = EXCLUDED.tags_expr, watched_at = now();
END
$watch$;

-- Takes a table out of invalidation (the inverse of cache_watch).
CREATE FUNCTION cache_unwatch(p_table regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS cache_capture ON %s', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS cache_capture_truncate ON %s', p_table);
    EXECUTE format('DROP FUNCTION IF EXISTS %I()', 'cache_capture_' || (SELECT relname FROM pg_class WHERE oid = p_table));
    DELETE FROM cache_watches WHERE table_name = p_table;
END
$$;
