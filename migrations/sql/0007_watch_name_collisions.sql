-- cache_watch refuses a table whose trigger function would be another watched table's.
--
-- The generator names a table's trigger function cache_capture_<table name>, without the schema,
-- and Postgres cuts names at 63 bytes. So audit.notes and public.notes, or two names that agree
-- in their first 49 bytes, got the same function: watching the second replaced the first's
-- trigger body, and the first table's changes were then recorded under the second's name.
-- The old generator stays, renamed; cache_watch now checks the name before calling it.
ALTER FUNCTION cache_watch(regclass, text, text) RENAME TO cache_watch_generate;
COMMENT ON FUNCTION cache_watch_generate(regclass, text, text) IS
    'The trigger generator behind cache_watch; call cache_watch, which checks the names first.';

CREATE FUNCTION cache_watch(p_table regclass, p_tenant_expr text, p_tags_expr text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    capture_fn name := ('cache_capture_' || (SELECT c.relname FROM pg_class c WHERE c.oid = p_table))::name;
    holder regclass;
BEGIN
    SELECT w.table_name INTO holder
    FROM cache_watches w JOIN pg_class c ON c.oid = w.table_name
    WHERE w.table_name <> p_table AND ('cache_capture_' || c.relname)::name = capture_fn;
    IF holder IS NOT NULL THEN
        RAISE EXCEPTION 'cache_watch: % would share the trigger function % with the watched table %',
                        p_table, capture_fn, holder
            USING ERRCODE = 'duplicate_function',
                  HINT = 'Watched tables need names that differ in their first 49 bytes, whatever their schema: rename one of them.';
    END IF;
    PERFORM cache_watch_generate(p_table, p_tenant_expr, p_tags_expr);
END
$$;
