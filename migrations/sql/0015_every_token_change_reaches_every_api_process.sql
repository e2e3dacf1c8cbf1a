-- A token given another role or tenant (or hash) by hand takes effect in every API process the
-- moment the change commits, as a revocation already does (migration 14).
--
-- Before this, only a revocation, a deletion and a TRUNCATE were announced: a token demoted from
-- admin to viewer with an UPDATE kept its old role wherever it was verified before, for up to
-- cache.token_cache_secs. Now every UPDATE that changes what a verification reads (the token's
-- tenant, role, whether it is revoked, or its hash) announces the token's old hash, and its new
-- hash when that changed: every verification made of the token before is revoked, which is
-- what api_token_revoked() now stands for. An API process that hears a hash looks the token up
-- again before it next trusts it (api/src/auth.rs); a stamp of last_used_at, which the API
-- writes on lookups, announces nothing. The deletion and TRUNCATE triggers keep the function.

CREATE OR REPLACE FUNCTION api_token_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify(api_token_channel(), '');
        RETURN NULL;
    END IF;
    PERFORM pg_notify(api_token_channel(), encode(OLD.token_hash, 'hex'));
    IF TG_OP = 'UPDATE' AND NEW.token_hash <> OLD.token_hash THEN
        PERFORM pg_notify(api_token_channel(), encode(NEW.token_hash, 'hex'));
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER api_token_revoked ON api_tokens;
CREATE TRIGGER api_token_changed AFTER UPDATE ON api_tokens FOR EACH ROW
    WHEN ((OLD.tenant_id, OLD.role, OLD.revoked_at IS NULL, OLD.token_hash)
          IS DISTINCT FROM (NEW.tenant_id, NEW.role, NEW.revoked_at IS NULL, NEW.token_hash))
    EXECUTE FUNCTION api_token_revoked();

-- CREATE OR REPLACE reset the function's settings: pinned again, as in migration 14, so a
-- session whose search_path lacks this schema still announces.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION api_token_revoked() SET search_path = %I, pg_temp', current_schema());
END $$;
