-- OpenRisk domain schema: tenants, tokens, risks and everything a risk embeds or aggregates.
-- Every tenant-owned table carries tenant_id and references its parent through (tenant_id, id),
-- so the database itself refuses a link between two tenants' rows.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Only the SHA-256 of a bearer token is stored; the token itself is shown once at creation.
CREATE TABLE api_tokens (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL DEFAULT '' CHECK (length(name) <= 255),
    token_hash    bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    role          text NOT NULL CHECK (role IN ('viewer', 'analyst', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_tokens_tenant_idx ON api_tokens (tenant_id);

CREATE TABLE assets (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    asset_type   text NOT NULL CHECK (length(asset_type) BETWEEN 1 AND 64),
    criticality  text NOT NULL DEFAULT 'MEDIUM' CHECK (criticality IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')),
    owner        text NOT NULL DEFAULT '' CHECK (length(owner) <= 255),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE INDEX assets_tenant_name_idx ON assets (tenant_id, name);

CREATE TABLE risks (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    title          text NOT NULL CHECK (length(title) BETWEEN 1 AND 255),
    description    text NOT NULL DEFAULT '' CHECK (length(description) <= 10000),
    impact         smallint NOT NULL CHECK (impact BETWEEN 1 AND 5),
    probability    smallint NOT NULL CHECK (probability BETWEEN 1 AND 5),
    -- impact × probability × average criticality factor of linked assets; kept by triggers below.
    score          numeric(6, 2) NOT NULL DEFAULT 0 CHECK (score >= 0),
    severity       text GENERATED ALWAYS AS (
                       CASE WHEN score >= 20 THEN 'CRITICAL'
                            WHEN score >= 12 THEN 'HIGH'
                            WHEN score >= 6 THEN 'MEDIUM'
                            ELSE 'LOW' END) STORED,
    status         text NOT NULL DEFAULT 'DRAFT' CHECK (status IN ('DRAFT', 'ACTIVE', 'MITIGATED', 'ACCEPTED')),
    tags           text[] NOT NULL DEFAULT '{}' CHECK (cardinality(tags) <= 50),
    owner          text NOT NULL DEFAULT '' CHECK (length(owner) <= 255),
    source         text NOT NULL DEFAULT 'MANUAL' CHECK (source IN ('MANUAL', 'THEHIVE', 'OPENRMF')),
    external_id    text CHECK (length(external_id) <= 255),
    custom_fields  jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(custom_fields) = 'object'),
    frameworks     text[] NOT NULL DEFAULT '{}' CHECK (cardinality(frameworks) <= 50),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz,
    UNIQUE (tenant_id, id)
);
-- The list filters and sorts the API offers, tenant first, live rows only.
CREATE INDEX risks_tenant_score_idx    ON risks (tenant_id, score DESC, id) WHERE deleted_at IS NULL;
CREATE INDEX risks_tenant_created_idx  ON risks (tenant_id, created_at DESC, id) WHERE deleted_at IS NULL;
CREATE INDEX risks_tenant_updated_idx  ON risks (tenant_id, updated_at DESC, id) WHERE deleted_at IS NULL;
CREATE INDEX risks_tenant_title_idx    ON risks (tenant_id, title, id) WHERE deleted_at IS NULL;
CREATE INDEX risks_tenant_status_idx   ON risks (tenant_id, status) WHERE deleted_at IS NULL;
CREATE INDEX risks_tenant_severity_idx ON risks (tenant_id, severity) WHERE deleted_at IS NULL;
CREATE INDEX risks_tenant_owner_idx    ON risks (tenant_id, owner) WHERE deleted_at IS NULL;
CREATE INDEX risks_tags_idx            ON risks USING gin (tags) WHERE deleted_at IS NULL;
CREATE INDEX risks_search_idx          ON risks USING gin ((title || ' ' || description) gin_trgm_ops) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX risks_external_idx ON risks (tenant_id, source, external_id) WHERE external_id IS NOT NULL;

CREATE TABLE mitigations (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id             uuid NOT NULL,
    risk_id               uuid NOT NULL,
    title                 text NOT NULL CHECK (length(title) BETWEEN 1 AND 255),
    assignee              text NOT NULL DEFAULT '' CHECK (length(assignee) <= 255),
    status                text NOT NULL DEFAULT 'PLANNED' CHECK (status IN ('PLANNED', 'IN_PROGRESS', 'DONE')),
    progress              smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    due_date              date,
    cost                  smallint NOT NULL DEFAULT 1 CHECK (cost BETWEEN 1 AND 3),
    mitigation_time_days  integer NOT NULL DEFAULT 0 CHECK (mitigation_time_days BETWEEN 0 AND 3650),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, risk_id) REFERENCES risks (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX mitigations_risk_idx ON mitigations (tenant_id, risk_id);
CREATE INDEX mitigations_tenant_status_idx ON mitigations (tenant_id, status);

CREATE TABLE mitigation_subactions (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid NOT NULL,
    mitigation_id  uuid NOT NULL,
    title          text NOT NULL CHECK (length(title) BETWEEN 1 AND 255),
    completed      boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, mitigation_id) REFERENCES mitigations (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX mitigation_subactions_mitigation_idx ON mitigation_subactions (tenant_id, mitigation_id);

CREATE TABLE risk_assets (
    tenant_id   uuid NOT NULL,
    risk_id     uuid NOT NULL,
    asset_id    uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, risk_id, asset_id),
    FOREIGN KEY (tenant_id, risk_id) REFERENCES risks (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, asset_id) REFERENCES assets (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX risk_assets_asset_idx ON risk_assets (tenant_id, asset_id);

CREATE TABLE risk_history (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    risk_id      uuid NOT NULL,
    score        numeric(6, 2) NOT NULL,
    impact       smallint NOT NULL,
    probability  smallint NOT NULL,
    status       text NOT NULL,
    change_type  text NOT NULL CHECK (change_type IN ('CREATED', 'UPDATED', 'DELETED', 'RESTORED')),
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, risk_id) REFERENCES risks (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX risk_history_tenant_time_idx ON risk_history (tenant_id, recorded_at);
CREATE INDEX risk_history_risk_idx ON risk_history (tenant_id, risk_id);

-- Score: impact × probability × mean criticality factor of the linked assets (1 when none).
CREATE FUNCTION criticality_factor(criticality text) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE criticality WHEN 'LOW' THEN 0.8 WHEN 'MEDIUM' THEN 1.0
                            WHEN 'HIGH' THEN 1.25 WHEN 'CRITICAL' THEN 1.5 END
$$;

CREATE FUNCTION risk_compute_score(p_risk_id uuid, p_impact smallint, p_probability smallint) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT round(p_impact * p_probability * coalesce(avg(criticality_factor(a.criticality)), 1.0), 2)
    FROM risk_assets ra JOIN assets a ON a.tenant_id = ra.tenant_id AND a.id = ra.asset_id
    WHERE ra.risk_id = p_risk_id
$$;

CREATE FUNCTION risks_set_score() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.score := risk_compute_score(NEW.id, NEW.impact, NEW.probability);
    RETURN NEW;
END
$$;
CREATE TRIGGER risks_set_score BEFORE INSERT OR UPDATE ON risks
    FOR EACH ROW EXECUTE FUNCTION risks_set_score();

-- Re-scoring a risk is a plain UPDATE, so it goes through risks_set_score and the cache triggers.
CREATE FUNCTION risk_assets_rescore() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE risks SET score = score WHERE id = NEW.risk_id;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE risks SET score = score WHERE id = OLD.risk_id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER risk_assets_rescore AFTER INSERT OR UPDATE OR DELETE ON risk_assets
    FOR EACH ROW EXECUTE FUNCTION risk_assets_rescore();

CREATE FUNCTION assets_rescore() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE risks SET score = score
    WHERE id IN (SELECT risk_id FROM risk_assets WHERE tenant_id = NEW.tenant_id AND asset_id = NEW.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER assets_rescore AFTER UPDATE OF criticality ON assets
    FOR EACH ROW WHEN (OLD.criticality IS DISTINCT FROM NEW.criticality) EXECUTE FUNCTION assets_rescore();

-- Score history feeding the trends endpoint: one row per creation and per change of what is scored.
CREATE FUNCTION risks_record_history() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    change text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        change := 'CREATED';
    ELSIF OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL THEN
        change := 'DELETED';
    ELSIF OLD.deleted_at IS NOT NULL AND NEW.deleted_at IS NULL THEN
        change := 'RESTORED';
    ELSIF (OLD.score, OLD.impact, OLD.probability, OLD.status)
          IS DISTINCT FROM (NEW.score, NEW.impact, NEW.probability, NEW.status) THEN
        change := 'UPDATED';
    ELSE
        RETURN NULL;
    END IF;
    INSERT INTO risk_history (tenant_id, risk_id, score, impact, probability, status, change_type)
    VALUES (NEW.tenant_id, NEW.id, NEW.score, NEW.impact, NEW.probability, NEW.status, change);
    RETURN NULL;
END
$$;
CREATE TRIGGER risks_record_history AFTER INSERT OR UPDATE ON risks
    FOR EACH ROW EXECUTE FUNCTION risks_record_history();
