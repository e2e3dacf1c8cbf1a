# shellcheck shell=bash
# Sourced by lag_pgbench.sh and api_ab.sh: the wrk script both read a tenant's cached risks with.
#
# wrk_details DATABASE_URL TENANT_ID TOKEN FILE
#   writes FILE, a wrk script that sends GET /api/v1/risks/<id> for a uniformly drawn live risk
#   of the tenant, with the bearer TOKEN.
wrk_details() {
    local database_url=$1 tenant=$2 token=$3 file=$4
    {
        echo "local paths = {"
        psql "$database_url" -Atc "SELECT '\"/api/v1/risks/' || id || '\",' FROM risks
                                   WHERE tenant_id = '$tenant' AND deleted_at IS NULL"
        echo "}"
        echo "wrk.headers[\"Authorization\"] = \"Bearer $token\""
        echo "request = function() return wrk.format(\"GET\", paths[math.random(#paths)]) end"
    } >"$file"
}
