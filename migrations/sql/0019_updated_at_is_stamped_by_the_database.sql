-- `updated_at` moves whenever a row's content changes, whoever changes it, stamped by the
-- database's clock. Before, only the API moved it, from its own host's clock (so with clock skew
-- a change could be dated before the row's `created_at`, which the database stamps), and nothing
-- moved it when a trigger re-scored a risk (a linked asset's new criticality, a link made or
-- removed) or a program wrote the row by SQL. An UPDATE that changes nothing keeps it, so a PATCH
-- that changes nothing keeps the row's entity tag; one that writes another `updated_at` itself (a
-- sync keeping its source's times) keeps what it writes.
--
-- "Changes" is the test the cache's capture trigger makes (`*<>`, byte for byte), so a row whose
-- served body changes (a custom field's 15 written 15.0, equal as jsonb) is stamped too. The stamp
-- is the time of the change (`clock_timestamp()`), taken once the row is locked, not its
-- transaction's start (`now()`), which a transaction that waited for the row's lock would give,
-- dating its change before the one it waited for. (Not the previous stamp plus a microsecond at
-- the least: a row stamped at the end of year 9999, which migration 0010 allows, could then never
-- change again.)
--
-- Rows are compared as records, which costs a write about 2 µs a row where comparing them as
-- `jsonb` cost about 14 (`load_tests/updated_at_stamp_cost.sh`, load_tests/RESULTS.md).
CREATE FUNCTION stamp_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := clock_timestamp();
    END IF;
    RETURN NEW;
END
$$;

-- Risks have a generated column (severity), which a BEFORE trigger sees uncomputed in NEW and its
-- WHEN clause may not read: the comparison takes it from OLD (it follows from the score, which is
-- compared). BEFORE triggers fire in name order, so this one fires after risks_set_score and a
-- new score counts as a change.
CREATE FUNCTION risks_stamp_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    compared risks := NEW;
BEGIN
    compared.severity := OLD.severity;
    compared.updated_at := OLD.updated_at;
    IF compared *<> OLD AND NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := clock_timestamp();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER stamp_updated_at BEFORE UPDATE ON risks
    FOR EACH ROW EXECUTE FUNCTION risks_stamp_updated_at();
CREATE TRIGGER stamp_updated_at BEFORE UPDATE ON assets
    FOR EACH ROW WHEN (OLD *<> NEW) EXECUTE FUNCTION stamp_updated_at();
CREATE TRIGGER stamp_updated_at BEFORE UPDATE ON mitigations
    FOR EACH ROW WHEN (OLD *<> NEW) EXECUTE FUNCTION stamp_updated_at();
CREATE TRIGGER stamp_updated_at BEFORE UPDATE ON mitigation_subactions
    FOR EACH ROW WHEN (OLD *<> NEW) EXECUTE FUNCTION stamp_updated_at();
