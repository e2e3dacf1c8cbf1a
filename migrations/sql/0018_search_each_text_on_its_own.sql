-- A risk search (`q`) matches a title or a description that contains the text, never text that
-- spans the two: the old index, and the query it served, searched `title || ' ' || description`,
-- so `q=ha br` found a risk titled "alpha" described as "bravo". One trigram index per column
-- serves `title ILIKE … OR description ILIKE …` (a bitmap OR of the two).
--
-- The old index, `risks_search_idx`, stays for this release: API processes of the release before
-- still search the concatenation while a rolling upgrade runs (docs/operations.md, "Upgrades":
-- drop only in a later release), and dropping it here would also upgrade this transaction's lock
-- on `risks` (SHARE, for the builds) to ACCESS EXCLUSIVE, a deadlock with any write that locked a
-- risk before the builds and updates it after. A later release's migration drops it.
CREATE INDEX risks_title_search_idx       ON risks USING gin (title gin_trgm_ops)       WHERE deleted_at IS NULL;
CREATE INDEX risks_description_search_idx ON risks USING gin (description gin_trgm_ops) WHERE deleted_at IS NULL;
