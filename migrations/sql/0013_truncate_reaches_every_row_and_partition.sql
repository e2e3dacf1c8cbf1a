-- TRUNCATE invalidates every tenant whose rows it removes, whoever runs it and whichever
-- partition it names; and cache_watch refuses a tags expression that gives no array.
--
-- Before this:
--   * the BEFORE TRUNCATE trigger read the rows' tenants as the truncating role. Under row-level
--     security that role may see only some tenants' rows, while TRUNCATE removes them all: the
--     other tenants' entries stayed stale until they expired;
--   * partitions do not inherit statement triggers, so a TRUNCATE naming one partition of a
--     watched partitioned table wrote no event, and its tenants' entries stayed stale;
--   * a tags expression giving one text (ARRAY[...] left out) passed cache_watch's check, which
--     casts to text[] on no rows, and then every write to the table failed;
--   * cache_hold_parent read a parent column its child rows lack (a misspelt name) as NULL, and
--     so held no row, silently.
-- Now cache_truncated runs as its owner, the role that ran the migrations, with row-level
-- security off (so it reads every row, or fails, never skipping hidden ones) and a fixed
-- search_path, for the watch of the table it fired on or of that table's nearest watched
-- ancestor. cache_watch gives every leaf partition the table has then a TRUNCATE trigger of its
-- own (call it again after adding partitions); a TRUNCATE of the partitioned table fires those
-- too, and its own trigger reads only the partitions without one.

CREATE OR REPLACE FUNCTION cache_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    watch cache_watches;
    partitioned boolean := (SELECT c.relkind = 'p' FROM pg_class c WHERE c.oid = TG_RELID);
BEGIN
    -- pg_partition_ancestors lists a partition and its ancestors, nearest first, and nothing for
    -- a table outside any partition tree.
    SELECT w.* INTO watch
    FROM (SELECT TG_RELID::regclass AS relid, 0::bigint AS depth
          UNION ALL
          SELECT a.relid, a.depth FROM pg_partition_ancestors(TG_RELID) WITH ORDINALITY AS a(relid, depth)) AS a
    JOIN cache_watches w ON w.table_name = a.relid
    ORDER BY a.depth
    LIMIT 1;
    -- A partition detached from its watched table keeps the trigger, and is watched no more.
    IF FOUND THEN
        EXECUTE format('SELECT cache_emit(%1$L, ''TRUNCATE'', t.tenant, ARRAY[''all'']) '
                       'FROM (SELECT DISTINCT (%2$s)::uuid AS tenant FROM %3$s AS r %4$s) AS t',
                       TG_ARGV[0], watch.tenant_expr, TG_RELID::regclass,
                       CASE WHEN partitioned THEN 'WHERE r.tableoid NOT IN (SELECT g.tgrelid FROM pg_trigger g '
                                                  'WHERE g.tgname = ''cache_capture_truncate'' AND g.tgenabled <> ''D'')' ELSE '' END);
    END IF;
    RETURN NULL;
END
$$;

-- A function that runs as its owner resolves names only where the cache's own objects are, so a
-- caller's search_path cannot substitute one.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION cache_truncated() SET search_path = %I, pg_temp', current_schema());
END
$$;
ALTER FUNCTION cache_truncated() SET row_security = off;

-- Drops the TRUNCATE trigger of every leaf partition of p_table (at any depth) that has no watch
-- of its own, and when p_watched gives each one anew for p_table's watch, writing the name
-- p_table's row triggers write.
CREATE FUNCTION cache_partition_triggers(p_table regclass, p_watched boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    leaf regclass;
BEGIN
    FOR leaf IN SELECT p.relid FROM pg_partition_tree(p_table) AS p JOIN pg_class c ON c.oid = p.relid
                WHERE p.isleaf AND p.relid <> p_table AND c.relkind = 'r'
                  AND NOT EXISTS (SELECT 1 FROM cache_watches w WHERE w.table_name = p.relid) LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS cache_capture_truncate ON %s', leaf);
        IF p_watched THEN
            EXECUTE format('CREATE TRIGGER cache_capture_truncate BEFORE TRUNCATE ON %s '
                           'FOR EACH STATEMENT EXECUTE FUNCTION cache_truncated(%L)', leaf, p_table::text);
        END IF;
    END LOOP;
END
$$;

-- cache_unwatch as 0012 made it stays, as cache_unwatch_table, under the one that also takes the
-- partitions' triggers away.
ALTER FUNCTION cache_unwatch(regclass) RENAME TO cache_unwatch_table;

CREATE FUNCTION cache_unwatch(p_table regclass) RETURNS void
LANGUAGE sql AS $$
    SELECT cache_partition_triggers(p_table, false);
    SELECT cache_unwatch_table(p_table);
$$;

-- cache_watch as 0012 made it (refuse a clashing name, move aside, generate) stays, as
-- cache_watch_named, under the one that also reaches the partitions and checks the tags' type.
ALTER FUNCTION cache_watch(regclass, text, text) RENAME TO cache_watch_named;

CREATE FUNCTION cache_watch(p_table regclass, p_tenant_expr text, p_tags_expr text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    tags_type regtype;
BEGIN
    -- Its checks first: they name a column the expressions get wrong.
    PERFORM cache_watch_named(p_table, p_tenant_expr, p_tags_expr);
    PERFORM cache_partition_triggers(p_table, true);
    -- The type of the tags on a row of the table's type that is all NULLs, so no row is read;
    -- raising here undoes what the calls above made.
    EXECUTE format('SELECT pg_typeof(%s) FROM (SELECT) AS one LEFT JOIN %s AS r ON false', p_tags_expr, p_table)
        INTO tags_type;
    IF (SELECT t.typcategory FROM pg_type t WHERE t.oid = tags_type) <> 'A' THEN
        RAISE EXCEPTION 'cache_watch: the tags expression of % gives %, not an array of tags', p_table, tags_type
            USING HINT = 'Write ARRAY[...], as in ARRAY[''risk:'' || r.risk_id].';
    END IF;
END
$$;

SELECT cache_partition_triggers(table_name, true) FROM cache_watches ORDER BY table_name::text;

-- cache_hold_parent as 0011 made it, refusing a child table that lacks a column it reads.
CREATE OR REPLACE FUNCTION cache_hold_parent() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    hold text := format('SELECT 1 FROM %I WHERE tenant_id = $1 AND id = $2 FOR SHARE', TG_ARGV[0]);
    child jsonb;
BEGIN
    -- The new row, then the old one; a DELETE has no new row and an INSERT no old one.
    FOREACH child IN ARRAY array_remove(ARRAY[to_jsonb(NEW), to_jsonb(OLD)], NULL) LOOP
        IF (TG_NARGS = 2 AND child ? TG_ARGV[1] AND child ? 'tenant_id') IS NOT TRUE THEN
            RAISE EXCEPTION 'cache_hold_parent on %: it needs the columns tenant_id and %', TG_TABLE_NAME, TG_ARGV[1];
        END IF;
        EXECUTE hold USING (child ->> 'tenant_id')::uuid, (child ->> TG_ARGV[1])::uuid;
    END LOOP;
    RETURN coalesce(NEW, OLD);
END
$$;
