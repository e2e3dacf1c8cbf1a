-- Cheaper capture triggers: the same events as 0002's, for a fraction of the writer's CPU.
--
-- Measured with load_tests/trigger_cost.sh, the 0002 trigger cost a single-row UPDATE about a
-- third of its throughput. Nearly all of it was plpgsql evaluating expressions: plpgsql sets up
-- each expression it evaluates once per transaction, so a short transaction pays for every
-- expression and every nested function call (cache_emit) the trigger runs. The generated trigger
-- now runs one INSERT and two conditions on its common path:
--   * each watched table gets two SQL functions, cache_tenant_<table>(r) and cache_tags_<table>(r),
--     built from its cache_watch expressions. The planner inlines them, so one INSERT can use the
--     OLD and the NEW row's tags together;
--   * the UPDATE test for "nothing changed" is OLD *= NEW (same bytes). It needs no equality operator
--     per column type;
--   * an UPDATE that stays in one tenant writes one row carrying the old and the new tags (the
--     invalidator removes duplicates). A row moved to another tenant, and TRUNCATE, still use
--     cache_emit.
-- The park protocol of 0002 is unchanged.

-- Raises the error cache_emit raises for a row whose tenant expression gives NULL (called only then).
CREATE FUNCTION cache_no_tenant(p_table text) RETURNS uuid
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'cache_emit: % row maps to no tenant; fix its cache_watch tenant expression', p_table;
END
$$;

CREATE OR REPLACE FUNCTION cache_watch(p_table regclass, p_tenant_expr text, p_tags_expr text) RETURNS void
LANGUAGE plpgsql AS $watch$
DECLARE
    relname text := (SELECT c.relname FROM pg_class c WHERE c.oid = p_table);
    capture_fn text := format('%I', 'cache_capture_' || relname);
    tenant_fn text := format('%I', 'cache_tenant_' || relname);
    tags_fn text := format('%I', 'cache_tags_' || relname);
BEGIN
    -- Fail here, not at the first write, when an expression does not fit the table.
    EXECUTE format('SELECT (%s)::uuid, (%s)::text[] FROM %s AS r LIMIT 0', p_tenant_expr, p_tags_expr, p_table);

    EXECUTE format('CREATE OR REPLACE FUNCTION %s(r %s) RETURNS uuid LANGUAGE sql STABLE AS %L',
                   tenant_fn, p_table, format('SELECT (%s)::uuid', p_tenant_expr));
    EXECUTE format('CREATE OR REPLACE FUNCTION %s(r %s) RETURNS text[] LANGUAGE sql STABLE AS %L',
                   tags_fn, p_table, format('SELECT array_remove((%s)::text[], NULL)', p_tags_expr));

    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION %1$s() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                IF OLD *= NEW THEN
                    RETURN NULL;
                END IF;
                IF (%3$s(OLD) = %3$s(NEW)) IS NOT TRUE THEN
                    PERFORM cache_emit(%5$L, TG_OP, %3$s(OLD), %4$s(OLD)), cache_emit(%5$L, TG_OP, %3$s(NEW), %4$s(NEW));
                    RETURN NULL;
                END IF;
                INSERT INTO cache_outbox (tenant_id, table_name, op, tags)
                SELECT %3$s(NEW), %5$L, 'UPDATE', t.tags
                FROM (SELECT %4$s(OLD) || %4$s(NEW) AS tags) AS t WHERE cardinality(t.tags) > 0;
            ELSIF TG_OP = 'INSERT' THEN
                INSERT INTO cache_outbox (tenant_id, table_name, op, tags)
                SELECT coalesce(%3$s(NEW), cache_no_tenant(%5$L)), %5$L, 'INSERT', t.tags
                FROM (SELECT %4$s(NEW) AS tags) AS t WHERE cardinality(t.tags) > 0;
            ELSIF TG_OP = 'DELETE' THEN
                INSERT INTO cache_outbox (tenant_id, table_name, op, tags)
                SELECT coalesce(%3$s(OLD), cache_no_tenant(%5$L)), %5$L, 'DELETE', t.tags
                FROM (SELECT %4$s(OLD) AS tags) AS t WHERE cardinality(t.tags) > 0;
            ELSE
                PERFORM cache_emit(%5$L, 'TRUNCATE', t.tenant, ARRAY['all'])
                FROM (SELECT DISTINCT %3$s(r) AS tenant FROM %2$s AS r) AS t;
                RETURN NULL;
            END IF;
            IF NOT pg_try_advisory_xact_lock_shared(7273730001) THEN
                PERFORM pg_notify('openrisk_cache_wakeup', '');
            END IF;
            RETURN NULL;
        END
        $body$
    $fn$, capture_fn, p_table, tenant_fn, tags_fn, p_table::text);

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

-- Takes a table out of invalidation (the inverse of cache_watch). A watched table cannot be
-- dropped before this (its cache_tenant_/cache_tags_ functions take its row type), so no
-- cache_watches entry outlives its table.
CREATE OR REPLACE FUNCTION cache_unwatch(p_table regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    relname text := (SELECT c.relname FROM pg_class c WHERE c.oid = p_table);
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS cache_capture ON %s', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS cache_capture_truncate ON %s', p_table);
    EXECUTE format('DROP FUNCTION IF EXISTS %I()', 'cache_capture_' || relname);
    EXECUTE format('DROP FUNCTION IF EXISTS %I(%s)', 'cache_tenant_' || relname, p_table);
    EXECUTE format('DROP FUNCTION IF EXISTS %I(%s)', 'cache_tags_' || relname, p_table);
    DELETE FROM cache_watches WHERE table_name = p_table;
END
$$;

-- Regenerate every watched table's triggers with the new generator.
SELECT cache_watch(table_name, tenant_expr, tags_expr) FROM cache_watches ORDER BY table_name::text;
