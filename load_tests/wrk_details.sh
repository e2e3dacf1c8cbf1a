# shellcheck shell=bash
# Sourced by lag_pgbench.sh and api_ab.sh: the wrk script both read a tenant's cached risks with,
# and the check of wrk's report both trust its numbers by.
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

# wrk_answered_all REPORT WHAT
#   succeeds when REPORT (wrk's output) is that of a finished run in which every request was
#   answered: wrk prints its `Non-2xx or 3xx responses` and `Socket errors` lines only when there
#   were some. Otherwise prints them and why to stderr, naming WHAT, and fails: fast 401s or 5xx
#   would pass for throughput, and a lag measured "beside readers" that were refused had none.
wrk_answered_all() {
    local report=$1 what=$2
    if ! grep -q '^Requests/sec:' <<<"$report"; then
        echo "$what: wrk did not finish its run" >&2
        return 1
    fi
    if grep -E '^ *(Non-2xx or 3xx responses|Socket errors):' <<<"$report" >&2; then
        echo "$what: not every request was answered (above)" >&2
        return 1
    fi
}
