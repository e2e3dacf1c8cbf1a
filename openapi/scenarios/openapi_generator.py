"""The client scenario with the client openapi-generator's `python` generator makes (package
`openrisk_ogen`). Its methods raise `ApiException` for any status outside 2xx, 304 included; the
exception carries the status, the headers and, for problem+json errors, the parsed `Problem`.
`ApiResponse.headers` is a plain dict keyed by the names as sent (lowercase from this server)."""

import openrisk_ogen as og
from openrisk_ogen.exceptions import NotFoundException
from scenario import (
    BASE_URL, DUE_DATE, HIGH_CRITICALITY_FACTOR, TOKEN, check_paging, check_stats, create_risks, expect, step,
    tag_for,
)

api_client = og.ApiClient(og.Configuration(host=BASE_URL, access_token=TOKEN))
risks_api = og.RisksApi(api_client)
mitigations_api = og.MitigationsApi(api_client)
assets_api = og.AssetsApi(api_client)
stats_api = og.StatsApi(api_client)
tag = tag_for("openapi-generator")


def failure_of(call) -> og.ApiException:
    """The `ApiException` that `call()` raises (a failed step when it returns)."""
    try:
        call()
    except og.ApiException as error:
        return error
    raise AssertionError("expected an ApiException")


def create(fields: dict) -> tuple[og.Risk, str]:
    """Creates one risk for `create_risks`."""
    response = risks_api.create_risk_with_http_info(og.RiskCreate(**fields, status=og.RiskStatus.ACTIVE))
    expect(response.status_code == 201, f"status {response.status_code}")
    return response.data, response.headers["location"]


risks: dict[str, og.Risk] = create_risks(create, tag)
alpha = risks["Alpha"]

with step("list with filters and paging"):

    def page_titles(page: int, **filters) -> list[str]:
        response = risks_api.list_risks_with_http_info(
            tag=tag, status=og.RiskStatus.ACTIVE, limit=2, page=page, **filters
        )
        expect(isinstance(response.data, og.RiskPage), f"parsed as {type(response.data)}")
        expect((response.data.page, response.data.limit) == (page, 2), "page and limit echoed")
        expect(response.headers["cache-status"].startswith("openrisk;"), "Cache-Status")
        return [risk.title.split()[0] for risk in response.data.items]

    by_title = {"sort_by": og.RiskSortField.TITLE, "sort_dir": og.SortDirection.ASC}
    check_paging(page_titles, by_title)

with step("get, then 304 with If-None-Match"):
    first = risks_api.get_risk_with_http_info(alpha.id)
    expect(isinstance(first.data, og.RiskDetail), f"parsed as {type(first.data)}")
    etag = first.headers["etag"]
    not_modified = failure_of(lambda: risks_api.get_risk(alpha.id, if_none_match=etag))
    expect(not_modified.status == 304, f"status {not_modified.status}")
    expect(not_modified.headers["etag"] == etag, "the same ETag")

with step("patch (and clear the external id with null)"):
    changed = risks_api.update_risk(alpha.id, og.RiskPatch(impact=4, external_id=None))
    expect(changed.impact == 4 and changed.score == 12.0, f"score {changed.score}")
    expect(changed.external_id is None, f"external_id {changed.external_id!r}")

with step("a mitigation and a sub-action"):
    created = mitigations_api.create_mitigation_with_http_info(
        alpha.id,
        og.MitigationCreate(title="Offline backups", status=og.MitigationStatus.IN_PROGRESS, due_date=DUE_DATE),
    )
    expect(created.status_code == 201, f"status {created.status_code}")
    mitigation = created.data
    expect(mitigation.due_date == DUE_DATE, f"due date {mitigation.due_date!r}, read as a date")
    added = mitigations_api.create_sub_action(alpha.id, mitigation.id, og.SubActionCreate(title="Buy tapes"))
    expect(added.completed is False, "a new sub-action is open")
    subaction = mitigations_api.toggle_sub_action(alpha.id, mitigation.id, added.id)
    expect(subaction.completed is True, "toggled to completed")

with step("an asset linked to the risk"):
    asset = assets_api.create_asset(
        og.AssetCreate(name=f"File server {tag}", asset_type="server", criticality=og.Criticality.HIGH)
    )
    etag = risks_api.get_risk_with_http_info(alpha.id).headers["etag"]  # the detail just before the link
    linked = assets_api.link_asset_with_http_info(alpha.id, asset.id)
    expect(linked.status_code == 204, f"status {linked.status_code}")
    detail = risks_api.get_risk_with_http_info(alpha.id, if_none_match=etag)
    expect(detail.status_code == 200, f"the old ETag must not match any more: {detail.status_code}")
    expect([embedded.id for embedded in detail.data.assets] == [asset.id], "the asset is embedded")
    expect(detail.data.score == 12.0 * HIGH_CRITICALITY_FACTOR, f"re-scored: {detail.data.score}")
    embedded = [(m.id, [(s.id, s.completed) for s in m.subactions]) for m in detail.data.mitigations]
    expect(embedded == [(mitigation.id, [(subaction.id, True)])], f"mitigations {embedded}")

with step("the three stats routes"):
    check_stats(stats_api.get_stats(), stats_api.get_risk_matrix(), stats_api.get_trends(days=7))

with step("delete, then a problem+json 404 read as a Problem"):
    charlie = risks["Charlie"]
    deleted = risks_api.delete_risk_with_http_info(charlie.id)
    expect(deleted.status_code == 204, f"status {deleted.status_code}")
    gone = failure_of(lambda: risks_api.get_risk(charlie.id))
    expect(isinstance(gone, NotFoundException), f"raised {type(gone)}")
    expect(gone.headers["content-type"].startswith("application/problem+json"), gone.headers["content-type"])
    problem = gone.data
    expect(isinstance(problem, og.Problem), f"parsed as {type(problem)}")
    expect(problem.status == 404 and str(charlie.id) in problem.detail, f"problem {problem.to_dict()}")
