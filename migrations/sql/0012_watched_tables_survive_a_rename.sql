-- A watched table keeps its invalidation when it is renamed, and cache_watch and cache_unwatch
-- find its generated functions whatever name the table had when they were made.
--
-- The generator wrote the table's name, as it was at cache_watch time, into the trigger function:
--   * as the table_name of every outbox row, which the invalidator looks up in cache_watches.
--     After ALTER TABLE ... RENAME, cache_watches shows the new name, so every event of the table
--     was taken for an unknown table's: dead-lettered, with its tenant's whole cache invalidated
--     in its place, on every write;
--   * in the TRUNCATE branch's query, which then failed, or read a new table given the old name
--     and invalidated that table's tenants instead of the truncated one's;
--   * in the functions' names, which cache_unwatch looked up by the current name, so it left the
--     functions behind (and the table could not be dropped), and a new table watched under the
--     old name took over the renamed table's trigger function.
-- Now:
--   * cache_watches keeps every name the table's triggers have written (events_named), which the
--     invalidator accepts beside the current one;
--   * TRUNCATE goes through one function that reads the table it fired on, and writes the name
--     the row triggers write;
--   * cache_watch finds a table's functions through its triggers and its row type, regenerates
--     those made under an older name, and moves aside a renamed table's trigger function that
--     holds the name it needs (the renamed table keeps calling it, under a name of its own);
--   * cache_unwatch drops the functions no other table's trigger calls.
-- Calling cache_watch again for a renamed table regenerates its functions under its new name.
-- The migration regenerates every watched table from whatever state renames left behind.

ALTER TABLE cache_watches ADD COLUMN events_named text[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN cache_watches.events_named IS
    'Every table_name its triggers have written to cache_outbox: its names when cache_watch ran.';

-- The BEFORE TRUNCATE trigger of every watched table: 'all' of every tenant that had rows, read
-- from the table the trigger fired on, whatever its name now, as an event of the table named
-- by the trigger's argument (the name its row triggers write).
CREATE FUNCTION cache_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    watch cache_watches;
BEGIN
    SELECT * INTO STRICT watch FROM cache_watches WHERE table_name = TG_RELID;
    EXECUTE format('SELECT cache_emit(%L, ''TRUNCATE'', t.tenant, ARRAY[''all''])
                    FROM (SELECT DISTINCT (%s)::uuid AS tenant FROM %s AS r) AS t',
                   TG_ARGV[0], watch.tenant_expr, TG_RELID::regclass);
    RETURN NULL;
END
$$;

-- The functions cache_watch generated for p_table: the one its capture trigger calls, and the
-- tenant and tags functions that take its row type.
CREATE FUNCTION cache_generated_functions(p_table regclass) RETURNS SETOF regprocedure
LANGUAGE sql STABLE AS $$
    SELECT t.tgfoid::regprocedure
    FROM pg_trigger t
    WHERE t.tgrelid = p_table AND t.tgname = 'cache_capture'
    UNION
    SELECT p.oid::regprocedure
    FROM pg_proc p
    WHERE p.pronargs = 1
      AND p.proargtypes[0] = (SELECT c.reltype FROM pg_class c WHERE c.oid = p_table)
      AND (p.proname LIKE 'cache\_tenant\_%' OR p.proname LIKE 'cache\_tags\_%')
$$;

CREATE OR REPLACE FUNCTION cache_unwatch(p_table regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    generated regprocedure[] := ARRAY(SELECT cache_generated_functions(p_table));
    fn regprocedure;
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS cache_capture ON %s', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS cache_capture_truncate ON %s', p_table);
    FOREACH fn IN ARRAY generated LOOP
        -- A trigger function two tables shared before this migration stays for the other.
        IF NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgfoid = fn) THEN
            EXECUTE format('DROP FUNCTION %s', fn);
        END IF;
    END LOOP;
    DELETE FROM cache_watches WHERE table_name = p_table;
END
$$;

-- cache_watch as 0007 made it (refuse a name another watched table's name gives, then generate)
-- stays, as cache_watch_checked, for its refusal.
ALTER FUNCTION cache_watch(regclass, text, text) RENAME TO cache_watch_checked;

-- Generates p_table's functions and triggers under its name now, whatever it was watched under.
CREATE FUNCTION cache_regenerate(p_table regclass, p_tenant_expr text, p_tags_expr text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    earlier_names text[] := coalesce((SELECT w.events_named FROM cache_watches w WHERE w.table_name = p_table), '{}');
    relname name := (SELECT c.relname FROM pg_class c WHERE c.oid = p_table);
    capture_fn name := ('cache_capture_' || relname)::name;
    held regprocedure;
BEGIN
    -- A table renamed since it was watched may still call a function of that name: it keeps
    -- calling it (triggers name functions by oid) under a name the generator never gives.
    FOR held IN SELECT DISTINCT t.tgfoid::regprocedure FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
                WHERE t.tgname = 'cache_capture' AND t.tgrelid <> p_table AND p.proname = capture_fn LOOP
        EXECUTE format('ALTER FUNCTION %s RENAME TO %I', held, 'cache_moved_' || held::oid::text);
    END LOOP;
    -- Renamed since it was last watched: the functions made under the old name go.
    IF EXISTS (SELECT 1 FROM cache_generated_functions(p_table) AS f JOIN pg_proc p ON p.oid = f
               WHERE p.proname NOT IN (capture_fn, ('cache_tenant_' || relname)::name,
                                       ('cache_tags_' || relname)::name)) THEN
        PERFORM cache_unwatch(p_table);
    END IF;
    PERFORM cache_watch_generate(p_table, p_tenant_expr, p_tags_expr);
    EXECUTE format('DROP TRIGGER cache_capture_truncate ON %s', p_table);
    EXECUTE format('CREATE TRIGGER cache_capture_truncate BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION cache_truncated(%L)', p_table, p_table::text);
    -- Events written under an earlier name may still wait in the outbox.
    UPDATE cache_watches
    SET events_named = ARRAY(SELECT DISTINCT n FROM unnest(earlier_names || p_table::text) AS n ORDER BY n)
    WHERE table_name = p_table;
END
$$;

CREATE FUNCTION cache_watch(p_table regclass, p_tenant_expr text, p_tags_expr text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    capture_fn name := ('cache_capture_' || (SELECT c.relname FROM pg_class c WHERE c.oid = p_table))::name;
BEGIN
    -- Another watched table whose name now gives the same trigger function: cache_watch_checked
    -- raises 0007's error for it (rename one of them).
    IF EXISTS (SELECT 1 FROM cache_watches w JOIN pg_class c ON c.oid = w.table_name
               WHERE w.table_name <> p_table AND ('cache_capture_' || c.relname)::name = capture_fn) THEN
        PERFORM cache_watch_checked(p_table, p_tenant_expr, p_tags_expr);
    END IF;
    PERFORM cache_regenerate(p_table, p_tenant_expr, p_tags_expr);
END
$$;

-- Every watched table, regenerated under its name now, without 0007's refusal: renames before
-- this migration could bring two watched tables to names that give one function, which the move
-- aside handles. A row whose table was dropped (CASCADE) goes first. (Events a table renamed
-- before this migration wrote under its old name, and that still wait in the outbox, are
-- dead-lettered and stand in for their tenant's whole cache, as they were before it.)
DELETE FROM cache_watches w WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = w.table_name);
SELECT cache_regenerate(table_name, tenant_expr, tags_expr) FROM cache_watches ORDER BY table_name::text;
-- Trigger functions a table re-watched under a new name before this migration left behind.
DO $$
DECLARE
    orphan regprocedure;
BEGIN
    FOR orphan IN SELECT p.oid::regprocedure FROM pg_proc p
                  WHERE p.proname LIKE 'cache\_capture\_%' AND p.pronargs = 0
                    AND p.prorettype = 'trigger'::regtype
                    AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgfoid = p.oid) LOOP
        EXECUTE format('DROP FUNCTION %s', orphan);
    END LOOP;
END
$$;
