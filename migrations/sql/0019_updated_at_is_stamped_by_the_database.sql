-- `updated_at` moves whenever a row's content changes, whoever changes it, stamped by the
-- database's clock in the transaction that changed it. Before, only the API moved it, from its own
-- host's clock (so with clock skew a change could be dated before the row's `created_at`, which
-- the database stamps), and nothing moved it when a trigger re-scored a risk (a linked asset's new
-- criticality, a link made or removed) or a program wrote the row by SQL. An UPDATE that changes
-- nothing, or only `updated_at`, keeps what it writes there, so a PATCH that changes nothing keeps
-- the row's entity tag.
--
-- The trigger's arguments name the table's generated columns, which a BEFORE trigger sees
-- uncomputed in NEW; they follow from the other columns, so leaving them out loses nothing.
CREATE FUNCTION stamp_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- TG_ARGV is null, not empty, for a trigger without arguments.
    derived text[] := coalesce(TG_ARGV, '{}') || '{updated_at}';
BEGIN
    IF to_jsonb(NEW) - derived IS DISTINCT FROM to_jsonb(OLD) - derived THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

-- BEFORE triggers fire in name order: after risks_set_score, so a new score counts as a change.
CREATE TRIGGER stamp_updated_at BEFORE UPDATE ON risks
    FOR EACH ROW EXECUTE FUNCTION stamp_updated_at('severity');
CREATE TRIGGER stamp_updated_at BEFORE UPDATE ON assets
    FOR EACH ROW EXECUTE FUNCTION stamp_updated_at();
CREATE TRIGGER stamp_updated_at BEFORE UPDATE ON mitigations
    FOR EACH ROW EXECUTE FUNCTION stamp_updated_at();
CREATE TRIGGER stamp_updated_at BEFORE UPDATE ON mitigation_subactions
    FOR EACH ROW EXECUTE FUNCTION stamp_updated_at();
