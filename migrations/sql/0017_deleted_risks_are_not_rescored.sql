-- A soft-deleted risk keeps its links, so a change of a linked asset's criticality, or the
-- asset's deletion (which removes the links), re-scored it: an UPDATE of a deleted risk, which
-- risk_history recorded as UPDATED and the trends endpoint counted as that day's change and
-- averaged into its score. A deleted risk is out of the register: nothing re-scores it now, and
-- its history records no update but the one that restores it. (A restore is an UPDATE, so
-- risks_set_score computes its score afresh from its links then.)

-- The risks on either side of a link's change (NEW is null on a delete, OLD on an insert).
CREATE OR REPLACE FUNCTION risk_assets_rescore() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE risks SET score = score WHERE id IN (NEW.risk_id, OLD.risk_id) AND deleted_at IS NULL;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION assets_rescore() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE risks SET score = score
    WHERE deleted_at IS NULL
      AND id IN (SELECT risk_id FROM risk_assets WHERE tenant_id = NEW.tenant_id AND asset_id = NEW.id);
    RETURN NULL;
END
$$;

-- The history function stays; its update trigger now skips a risk deleted before and after.
DROP TRIGGER risks_record_history ON risks;
CREATE TRIGGER risks_record_history AFTER INSERT ON risks
    FOR EACH ROW EXECUTE FUNCTION risks_record_history();
CREATE TRIGGER risks_record_history_of_live_risks AFTER UPDATE ON risks
    FOR EACH ROW WHEN (OLD.deleted_at IS NULL OR NEW.deleted_at IS NULL) EXECUTE FUNCTION risks_record_history();
