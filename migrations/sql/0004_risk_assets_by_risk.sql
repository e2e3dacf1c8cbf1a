-- Re-scoring a risk (risk_compute_score, on every risk insert and update and on every link change)
-- looks up its links by risk_id alone; the primary key starts with tenant_id, so without this
-- index each re-score scanned every tenant's links (5000 inserts took ~25 s at 100k links).
CREATE INDEX risk_assets_risk_idx ON risk_assets (risk_id);
