-- TRUNCATE of risk_assets, or of assets (whose CASCADE truncates risk_assets too), removes links
-- without firing the row triggers that re-score their risks, so the risks kept the scores their
-- old links gave. (The cache stayed consistent with the table: the TRUNCATE invalidates every
-- tenant it empties, 0013; but what the table then held, and served, was a stale score.) A
-- statement trigger now re-scores every live risk whose stored score is not the one its links
-- give now (deleted risks are left alone, as 0017 decided: a restore re-scores).
--
-- It runs as its owner, with row-level security off, as cache_truncated does (0013): a role whose
-- policy shows it some tenants' risks still truncates every tenant's links.

CREATE FUNCTION risks_rescore_after_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    UPDATE risks SET score = score
    WHERE deleted_at IS NULL AND score IS DISTINCT FROM risk_compute_score(id, impact, probability);
    RETURN NULL;
END
$$;

-- Names resolve only where the cache's own objects are, so a caller's search_path cannot
-- substitute one for a function that runs as its owner.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION risks_rescore_after_truncate() SET search_path = %I, pg_temp', current_schema());
END
$$;
ALTER FUNCTION risks_rescore_after_truncate() SET row_security = off;

CREATE TRIGGER risk_assets_rescore_after_truncate AFTER TRUNCATE ON risk_assets
    FOR EACH STATEMENT EXECUTE FUNCTION risks_rescore_after_truncate();
