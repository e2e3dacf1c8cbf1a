-- A revoked token stops working in every API process the moment its revocation commits.
--
-- Before this, each API process trusted a token it had verified for cache.token_cache_secs, and
-- only the process that revoked it forgot it at once: elsewhere (another replica, or every
-- process after `openrisk-api token revoke` or an UPDATE by hand) the token kept working until
-- its cached verification expired.
-- Now a revocation, a deletion (of the token, or of its tenant) and a TRUNCATE announce
-- themselves on api_token_channel() when they commit (NOTIFY is transactional: nothing is
-- announced for a rollback). The payload is the token's SHA-256 in hex, what the API caches
-- verifications by; an empty payload (TRUNCATE) stands for every token. Each API process
-- listens on its own connection and forgets what is announced (api/src/token_revocations.rs).

CREATE FUNCTION api_token_channel() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 'openrisk_token_revoked'::text $$;

CREATE FUNCTION api_token_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify(api_token_channel(), '');
    ELSE
        PERFORM pg_notify(api_token_channel(), encode(OLD.token_hash, 'hex'));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER api_token_revoked AFTER UPDATE OF revoked_at ON api_tokens FOR EACH ROW
    WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION api_token_revoked();
CREATE TRIGGER api_token_deleted AFTER DELETE ON api_tokens FOR EACH ROW
    EXECUTE FUNCTION api_token_revoked();
CREATE TRIGGER api_tokens_truncated AFTER TRUNCATE ON api_tokens FOR EACH STATEMENT
    EXECUTE FUNCTION api_token_revoked();

-- The function names the channel's function unqualified: fixed to the schema it lives in, so a
-- session whose search_path lacks that schema still revokes, deletes and truncates.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION api_token_revoked() SET search_path = %I, pg_temp', current_schema());
END $$;
