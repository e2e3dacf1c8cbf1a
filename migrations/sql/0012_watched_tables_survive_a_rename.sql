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
--     functions behind (and the table could not be dropped), and a new table given the old name
--     took over the renamed table's trigger function.
-- Now cache_watches keeps the name the triggers write (events_named), which the invalidator
-- accepts beside the current one; TRUNCATE goes through one function that reads the table it fired
-- on; and both functions below find a table's functions through its triggers and its row type.
-- Nothing needs re-running after a rename; calling cache_watch for the table again regenerates
-- its functions under the new name and drops the old ones (which frees the old name for another
-- table).

ALTER TABLE cache_watches ADD COLUMN events_named text;
COMMENT ON COLUMN cache_watches.events_named IS
    'The table_name its triggers write to cache_outbox: its name when cache_watch last ran.';

-- The BEFORE TRUNCATE trigger of every watched table: 'all' of every tenant that had rows, read
-- from the table the trigger fired on, whatever its name now.
CREATE FUNCTION cache_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    watch cache_watches;
BEGIN
    SELECT * INTO STRICT watch FROM cache_watches WHERE table_name = TG_RELID;
    EXECUTE format('SELECT cache_emit(%L, ''TRUNCATE'', t.tenant, ARRAY[''all''])
                    FROM (SELECT DISTINCT (%s)::uuid AS tenant FROM %s AS r) AS t',
                   watch.events_named, watch.tenant_expr, TG_RELID::regclass);
    RETURN NULL;
END
$$;

-- The functions cache_watch generated for p_table: the one its capture triggers call, and the
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
        EXECUTE format('DROP FUNCTION %s', fn);
    END LOOP;
    DELETE FROM cache_watches WHERE table_name = p_table;
END
$$;

CREATE OR REPLACE FUNCTION cache_watch(p_table regclass, p_tenant_expr text, p_tags_expr text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    relname name := (SELECT c.relname FROM pg_class c WHERE c.oid = p_table);
    capture_fn name := ('cache_capture_' || relname)::name;
    holder regclass;
BEGIN
    -- Another table whose trigger calls a function of that name (it was renamed since it was
    -- watched), or a watched table whose name gives the same one.
    SELECT coalesce(
        (SELECT t.tgrelid::regclass FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
         WHERE t.tgname = 'cache_capture' AND t.tgrelid <> p_table AND p.proname = capture_fn LIMIT 1),
        (SELECT w.table_name FROM cache_watches w JOIN pg_class c ON c.oid = w.table_name
         WHERE w.table_name <> p_table AND ('cache_capture_' || c.relname)::name = capture_fn LIMIT 1))
    INTO holder;
    IF holder IS NOT NULL THEN
        RAISE EXCEPTION 'cache_watch: % would share the trigger function % with the watched table %',
                        p_table, capture_fn, holder
            USING ERRCODE = 'duplicate_function',
                  HINT = 'Watched tables need names that differ in their first 49 bytes, whatever their schema; '
                         'a watched table renamed since keeps its functions until cache_watch is called for it again.';
    END IF;
    -- Renamed since it was last watched: its functions carry the old name and go.
    IF EXISTS (SELECT 1 FROM cache_generated_functions(p_table) AS f JOIN pg_proc p ON p.oid = f
               WHERE p.proname NOT IN (capture_fn, ('cache_tenant_' || relname)::name,
                                       ('cache_tags_' || relname)::name)) THEN
        PERFORM cache_unwatch(p_table);
    END IF;
    PERFORM cache_watch_generate(p_table, p_tenant_expr, p_tags_expr);
    EXECUTE format('DROP TRIGGER cache_capture_truncate ON %s', p_table);
    EXECUTE format('CREATE TRIGGER cache_capture_truncate BEFORE TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION cache_truncated()', p_table);
    UPDATE cache_watches SET events_named = p_table::text WHERE table_name = p_table;
END
$$;

SELECT cache_watch(table_name, tenant_expr, tags_expr) FROM cache_watches ORDER BY table_name::text;
