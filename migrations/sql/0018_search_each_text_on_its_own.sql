-- A risk search (`q`) matches a title or a description that contains the text, never text that
-- spans the two: the old index, and the query it served, searched `title || ' ' || description`,
-- so `q=ha br` found a risk titled "alpha" described as "bravo". One trigram index per column
-- serves `title ILIKE … OR description ILIKE …` (a bitmap OR of the two).
CREATE INDEX risks_title_search_idx       ON risks USING gin (title gin_trgm_ops)       WHERE deleted_at IS NULL;
CREATE INDEX risks_description_search_idx ON risks USING gin (description gin_trgm_ops) WHERE deleted_at IS NULL;
DROP INDEX risks_search_idx;
