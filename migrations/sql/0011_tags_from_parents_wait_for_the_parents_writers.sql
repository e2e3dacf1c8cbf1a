-- Two watched tables compute tags from another table's rows: an asset invalidates the risks
-- linked to it (risk_assets, 0008), and a sub-action the risk of its mitigation (mitigations,
-- 0003). A trigger reads those rows as they were last committed, and nothing made the two
-- writes wait for each other: a link made while the asset's own change was still uncommitted
-- committed first, a reader cached the risk's detail with the asset's old row, and the asset's
-- change, which had found no link, then invalidated nothing of that risk. The same for a
-- sub-action written while its mitigation moved to another risk. (The rescore of 0001 raced the
-- same way: a link made during a change of the asset's criticality kept the old score.)
--
-- Now a write to a link holds its asset, and a write to a sub-action holds its mitigation, with
-- FOR SHARE: it waits for an uncommitted change of that row, and such a change waits for it.
-- Whichever commits second computes its tags (and score) from the first's committed rows. The
-- foreign keys' own FOR KEY SHARE does not do it: it does not conflict with an update that
-- leaves the key alone.

-- cache_hold_parent(parent_table, parent_id_column), as a BEFORE trigger of a child table: holds
-- the parent row (tenant_id, id) that the child's old and new rows name, FOR SHARE. For any table
-- whose tag expression reads another table (see the README on cache_watch).
CREATE FUNCTION cache_hold_parent() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    hold text := format('SELECT 1 FROM %I WHERE tenant_id = $1 AND id = $2 FOR SHARE', TG_ARGV[0]);
BEGIN
    IF TG_OP <> 'DELETE' THEN
        EXECUTE hold USING NEW.tenant_id, (to_jsonb(NEW) ->> TG_ARGV[1])::uuid;
    END IF;
    IF TG_OP = 'INSERT' THEN
        RETURN NEW;
    END IF;
    EXECUTE hold USING OLD.tenant_id, (to_jsonb(OLD) ->> TG_ARGV[1])::uuid;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;

CREATE TRIGGER risk_assets_hold_asset BEFORE INSERT OR UPDATE OR DELETE ON risk_assets
    FOR EACH ROW EXECUTE FUNCTION cache_hold_parent('assets', 'asset_id');
CREATE TRIGGER mitigation_subactions_hold_mitigation BEFORE INSERT OR UPDATE OR DELETE ON mitigation_subactions
    FOR EACH ROW EXECUTE FUNCTION cache_hold_parent('mitigations', 'mitigation_id');
