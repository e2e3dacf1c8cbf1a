"""The client scenario with the client openapi-python-client generates (package `openrisk_client`)."""

from openrisk_client import AuthenticatedClient
from openrisk_client.api.assets import create_asset, link_asset
from openrisk_client.api.mitigations import create_mitigation, create_sub_action, toggle_sub_action
from openrisk_client.api.risks import create_risk, delete_risk, get_risk, list_risks, update_risk
from openrisk_client.api.stats import get_risk_matrix, get_stats, get_trends
from openrisk_client.models import (
    AssetCreate,
    Criticality,
    MitigationCreate,
    MitigationStatus,
    Problem,
    Risk,
    RiskCreate,
    RiskDetail,
    RiskPage,
    RiskPatch,
    RiskSortField,
    RiskStatus,
    SortDirection,
    SubActionCreate,
)
from openrisk_client.types import UNSET
from scenario import (
    BASE_URL, DUE_DATE, HIGH_CRITICALITY_FACTOR, TOKEN, check_paging, check_stats, create_risks, expect, step,
    tag_for,
)

client = AuthenticatedClient(base_url=BASE_URL, token=TOKEN)
tag = tag_for("openapi-python-client")


def create(fields: dict) -> tuple[Risk, str]:
    """Creates one risk for `create_risks`."""
    response = create_risk.sync_detailed(client=client, body=RiskCreate(**fields, status=RiskStatus.ACTIVE))
    expect(response.status_code == 201, f"status {response.status_code}: {response.content!r}")
    expect(isinstance(response.parsed, Risk), f"parsed as {type(response.parsed)}")
    return response.parsed, response.headers["location"]


risks: dict[str, Risk] = create_risks(create, tag)
alpha = risks["Alpha"]

with step("list with filters and paging"):

    def page_titles(page: int, **filters) -> list[str]:
        response = list_risks.sync_detailed(
            client=client, tag=tag, status=RiskStatus.ACTIVE, limit=2, page=page, **filters
        )
        expect(response.status_code == 200, f"status {response.status_code}")
        expect(isinstance(response.parsed, RiskPage), f"parsed as {type(response.parsed)}")
        expect((response.parsed.page, response.parsed.limit) == (page, 2), "page and limit echoed")
        expect(response.headers["cache-status"].startswith("openrisk;"), "Cache-Status")
        return [risk.title.split()[0] for risk in response.parsed.items]

    by_title = {"sort_by": RiskSortField.TITLE, "sort_dir": SortDirection.ASC}
    check_paging(page_titles, by_title)

with step("get, then 304 with If-None-Match"):
    first = get_risk.sync_detailed(alpha.id, client=client)
    expect(first.status_code == 200 and isinstance(first.parsed, RiskDetail), f"status {first.status_code}")
    etag = first.headers["etag"]
    again = get_risk.sync_detailed(alpha.id, client=client, if_none_match=etag)
    expect(again.status_code == 304, f"status {again.status_code}")
    expect(again.content == b"" and again.headers["etag"] == etag, "empty 304 with the same ETag")

with step("patch (and clear the external id with null)"):
    response = update_risk.sync_detailed(alpha.id, client=client, body=RiskPatch(impact=4, external_id=None))
    expect(response.status_code == 200 and isinstance(response.parsed, Risk), f"status {response.status_code}")
    expect(response.parsed.impact == 4 and response.parsed.score == 12.0, f"score {response.parsed.score}")
    expect(response.parsed.external_id is UNSET, f"external_id {response.parsed.external_id!r}")

with step("a mitigation and a sub-action"):
    created = create_mitigation.sync_detailed(
        alpha.id,
        client=client,
        body=MitigationCreate(title="Offline backups", status=MitigationStatus.IN_PROGRESS, due_date=DUE_DATE),
    )
    expect(created.status_code == 201, f"status {created.status_code}: {created.content!r}")
    mitigation = created.parsed
    expect(mitigation.due_date == DUE_DATE, f"due date {mitigation.due_date!r}, read as a date")
    added = create_sub_action.sync_detailed(
        alpha.id, mitigation.id, client=client, body=SubActionCreate(title="Buy tapes")
    )
    expect(added.status_code == 201 and added.parsed.completed is False, f"status {added.status_code}")
    toggled = toggle_sub_action.sync_detailed(alpha.id, mitigation.id, added.parsed.id, client=client)
    expect(toggled.status_code == 200 and toggled.parsed.completed is True, "toggled to completed")
    subaction = toggled.parsed

with step("an asset linked to the risk"):
    asset = create_asset.sync_detailed(
        client=client, body=AssetCreate(name=f"File server {tag}", asset_type="server", criticality=Criticality.HIGH)
    )
    expect(asset.status_code == 201, f"status {asset.status_code}: {asset.content!r}")
    etag = get_risk.sync_detailed(alpha.id, client=client).headers["etag"]  # the detail just before the link
    linked = link_asset.sync_detailed(alpha.id, asset.parsed.id, client=client)
    expect(linked.status_code == 204, f"status {linked.status_code}")
    detail = get_risk.sync_detailed(alpha.id, client=client, if_none_match=etag)
    expect(detail.status_code == 200, f"the old ETag must not match any more: {detail.status_code}")
    expect([embedded_asset.id for embedded_asset in detail.parsed.assets] == [asset.parsed.id], "the asset is embedded")
    expect(detail.parsed.score == 12.0 * HIGH_CRITICALITY_FACTOR, f"re-scored: {detail.parsed.score}")
    embedded = [(m.id, [(s.id, s.completed) for s in m.subactions]) for m in detail.parsed.mitigations]
    expect(embedded == [(mitigation.id, [(subaction.id, True)])], f"mitigations {embedded}")

with step("the three stats routes"):
    check_stats(get_stats.sync_detailed(client=client).parsed, get_risk_matrix.sync_detailed(client=client).parsed, get_trends.sync_detailed(client=client, days=7).parsed)

with step("delete, then a problem+json 404 read as a Problem"):
    charlie = risks["Charlie"]
    deleted = delete_risk.sync_detailed(charlie.id, client=client)
    expect(deleted.status_code == 204, f"status {deleted.status_code}")
    gone = get_risk.sync_detailed(charlie.id, client=client)
    expect(gone.status_code == 404, f"status {gone.status_code}")
    expect(gone.headers["content-type"].startswith("application/problem+json"), gone.headers["content-type"])
    problem = gone.parsed
    expect(isinstance(problem, Problem), f"parsed as {type(problem)}")
    expect(problem.status == 404 and str(charlie.id) in problem.detail, f"problem {problem.to_dict()}")
