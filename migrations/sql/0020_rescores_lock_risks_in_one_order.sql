-- Re-scoring the risks a link or an asset's criticality change touches, and the asset's tags,
-- against concurrent writers. Three defects, each shown by a test in migrations/tests/rescores.rs:
--
-- * assets_rescore locked the linked risks in whatever order its plan met them (the links'
--   order, which differs from asset to asset), so two criticality changes of assets sharing
--   risks could deadlock: 47 of 300 such updates failed so in a review's run.
-- * assets_rescore and risk_assets_rescore skipped a risk their snapshot showed deleted. A
--   restore that had not yet committed was therefore never waited for: it computed the score
--   from the old criticality (or links), and nothing re-scored the risk after it (0017 made it
--   so; before, the UPDATE matched the row, waited, and re-scored it).
--   Now both lock every risk concerned, deleted or not, in id order first; the UPDATE after the
--   lock takes a new snapshot (read committed), which sees a restore it waited for. (The link
--   trigger runs once per link, so a statement changing many links, such as an asset's DELETE
--   cascading to them, still locks their risks link by link.)
-- * An asset's tags read its links (0008). A writer at REPEATABLE READ or SERIALIZABLE reads
--   them as of its transaction's snapshot, so a link committed after that snapshot was missed:
--   the linked risk's cached detail kept the asset's old row. Holding the asset (0011) does not
--   help there: a row another transaction only locked raises no serialization failure. Such a
--   write now also emits the tenant's `all` tag, which every cached response carries. (Its
--   re-score of the linked risks has the same blind spot: a risk linked after the writer's
--   snapshot keeps its score until its next write; the README says so.)

-- The asset's links are read once: this transaction has updated the asset, and a write to a link
-- holds its asset first (0011), so none of them changes before this transaction ends.
CREATE OR REPLACE FUNCTION assets_rescore() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    linked uuid[] := ARRAY(SELECT risk_id FROM risk_assets WHERE tenant_id = NEW.tenant_id AND asset_id = NEW.id);
BEGIN
    PERFORM 1 FROM risks WHERE id = ANY (linked) ORDER BY id FOR NO KEY UPDATE;
    UPDATE risks SET score = score WHERE id = ANY (linked) AND deleted_at IS NULL;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION risk_assets_rescore() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM risks WHERE id IN (NEW.risk_id, OLD.risk_id) ORDER BY id FOR NO KEY UPDATE;
    UPDATE risks SET score = score WHERE id IN (NEW.risk_id, OLD.risk_id) AND deleted_at IS NULL;
    RETURN NULL;
END
$$;

-- Whether each statement of the current transaction sees every transaction committed before it
-- started (READ COMMITTED), as a tag expression that reads other tables needs.
CREATE FUNCTION cache_statements_see_latest_commits() RETURNS boolean LANGUAGE sql STABLE
    AS $$SELECT current_setting('transaction_isolation') = 'read committed'$$;

SELECT cache_watch('assets', 'r.tenant_id',
    $$ARRAY['asset:' || r.id, 'assets']
      || ARRAY(SELECT 'risk:' || ra.risk_id FROM risk_assets ra
               WHERE ra.tenant_id = r.tenant_id AND ra.asset_id = r.id)
      || CASE WHEN cache_statements_see_latest_commits() THEN ARRAY[]::text[] ELSE ARRAY['all'] END$$);
