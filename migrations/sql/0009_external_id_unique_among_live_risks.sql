-- A soft-deleted risk no longer holds its external id: the client cannot see it, so it must be
-- able to create the risk again under the same (source, external_id).
DROP INDEX risks_external_idx;
CREATE UNIQUE INDEX risks_external_idx ON risks (tenant_id, source, external_id)
    WHERE external_id IS NOT NULL AND deleted_at IS NULL;
