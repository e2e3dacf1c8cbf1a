-- A soft-deleted risk keeps its links, so a change of a linked asset's criticality, or the
-- asset's deletion (which removes the links), re-scored it: an UPDATE of a deleted risk, which
-- risk_history recorded as UPDATED and the trends endpoint counted as that day's change and
-- averaged into its score. A deleted risk is out of the register; nothing re-scores it now, and
-- the history records no change of a deleted risk but its restore. (A restore is an UPDATE, so
-- risks_set_score computes its score afresh from its links then.)

CREATE OR REPLACE FUNCTION risk_assets_rescore() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE risks SET score = score WHERE id = NEW.risk_id AND deleted_at IS NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE risks SET score = score WHERE id = OLD.risk_id AND deleted_at IS NULL;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION assets_rescore() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE risks SET score = score
    WHERE id IN (SELECT risk_id FROM risk_assets WHERE tenant_id = NEW.tenant_id AND asset_id = NEW.id)
      AND deleted_at IS NULL;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION risks_record_history() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    change text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        change := 'CREATED';
    ELSIF OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL THEN
        change := 'DELETED';
    ELSIF OLD.deleted_at IS NOT NULL AND NEW.deleted_at IS NULL THEN
        change := 'RESTORED';
    ELSIF NEW.deleted_at IS NOT NULL THEN
        RETURN NULL;
    ELSIF (OLD.score, OLD.impact, OLD.probability, OLD.status)
          IS DISTINCT FROM (NEW.score, NEW.impact, NEW.probability, NEW.status) THEN
        change := 'UPDATED';
    ELSE
        RETURN NULL;
    END IF;
    INSERT INTO risk_history (tenant_id, risk_id, score, impact, probability, status, change_type)
    VALUES (NEW.tenant_id, NEW.id, NEW.score, NEW.impact, NEW.probability, NEW.status, change);
    RETURN NULL;
END
$$;
