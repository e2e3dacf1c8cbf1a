-- Every date and time the API serves is RFC 3339 with a four-digit year (the spec's `date` and
-- `date-time` formats), and the API accepts no other. SQL written around the API could still
-- store one outside years 1-9999 or `infinity`, which the API would then serve as `+10000-01-01`
-- (a body no generated client parses) or fail to decode. These checks refuse such a write with an
-- error that names the constraint.
--
-- NOT VALID: rows stored before this migration are not scanned (no long lock, no deploy that
-- fails on old data); every write from now on is checked. docs/operations.md ("Dates outside
-- four-digit years") says how to find old rows and validate the constraints.

CREATE FUNCTION four_digit_utc_year(at timestamptz) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN at >= TIMESTAMPTZ '0001-01-01 00:00:00+00' AND at < TIMESTAMPTZ '10000-01-01 00:00:00+00';

CREATE FUNCTION four_digit_year(day date) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN day BETWEEN DATE '0001-01-01' AND DATE '9999-12-31';

ALTER TABLE assets
    ADD CONSTRAINT assets_times_have_four_digit_years
    CHECK (four_digit_utc_year(created_at) AND four_digit_utc_year(updated_at)) NOT VALID;

ALTER TABLE risks
    ADD CONSTRAINT risks_times_have_four_digit_years
    CHECK (four_digit_utc_year(created_at) AND four_digit_utc_year(updated_at)) NOT VALID;

ALTER TABLE mitigations
    ADD CONSTRAINT mitigations_times_have_four_digit_years
    CHECK (four_digit_utc_year(created_at) AND four_digit_utc_year(updated_at) AND four_digit_year(due_date)) NOT VALID;

ALTER TABLE mitigation_subactions
    ADD CONSTRAINT mitigation_subactions_times_have_four_digit_years
    CHECK (four_digit_utc_year(created_at) AND four_digit_utc_year(updated_at)) NOT VALID;
