"""What the Python scenarios of openapi/clients.sh share: where the API is, and how steps report.

Each scenario drives one generated client through the same story (docs/clients.md lists it). It
stops at the first step that fails, printing the step and the reason, and exits non-zero.
"""

import datetime
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

BASE_URL = os.environ["SCENARIO_BASE_URL"]
TOKEN = os.environ["SCENARIO_TOKEN"]

# Score factor of a HIGH asset (api/src/model.rs, `Criticality`).
HIGH_CRITICALITY_FACTOR = 1.25
# A mitigation's due date: the document gives dates the `date` format, so clients read them as dates.
DUE_DATE = datetime.date(2027, 3, 31)


def tag_for(client: str) -> str:
    """A tag that only this run's risks from `client` carry, so that list filters see nothing else."""
    return f"{client}-{os.environ['SCENARIO_RUN_ID']}"


def expect(condition: bool, what: str) -> None:
    """Fails the current step with `what` unless `condition` holds."""
    if not condition:
        raise AssertionError(what)


@contextmanager
def step(name: str) -> Iterator[None]:
    """Runs one step: prints `ok <name>`, or the failure and its traceback, then exits 1."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - any failure ends the scenario with its reason
        print(f"FAIL {name}: {type(error).__name__}: {error}", flush=True)
        traceback.print_exc()
        sys.exit(1)
    print(f"ok   {name}", flush=True)


# The three risks every scenario creates: (name, impact, probability).
RISKS = (("Alpha", 2, 3), ("Bravo", 3, 3), ("Charlie", 4, 2))


def risk_fields(name: str, impact: int, probability: int, tag: str) -> dict:
    """The fields of one of `RISKS` as created by a scenario (the client adds the status)."""
    return {"title": f"{name} {tag}", "impact": impact, "probability": probability, "tags": [tag],
            "external_id": f"{tag}-{name}"}


def create_risks(create, tag: str) -> dict:
    """Creates `RISKS` in the step every scenario starts with: `create(fields)` sends one (the
    fields of `risk_fields`; the client adds the status), checks the status and the parsing, and
    returns the created risk and its `Location` header. Returns the risks by name."""
    with step("create three risks"):
        risks = {}
        for name, impact, probability in RISKS:
            risk, location = create(risk_fields(name, impact, probability, tag))
            expect(location == f"/api/v1/risks/{risk.id}", "Location")
            risks[name] = risk
    return risks


def check_paging(page_titles, by_title: dict) -> None:
    """The list's filters and paging over `RISKS`: `page_titles(page, **filters)` lists the first
    word of each title on that page of two."""
    expect(page_titles(1, **by_title) == ["Alpha", "Bravo"], "page 1 by title")
    expect(page_titles(2, **by_title) == ["Charlie"], "page 2 by title")
    expect(page_titles(1, min_score=8.5) == ["Bravo"], "min_score 8.5 keeps the 9")


def check_stats(stats, matrix, trends) -> None:
    """The three stats routes' answers (each client's parsed models) after `RISKS` were created
    today, Alpha re-scored to impact 4 and probability 3."""
    by_status = stats.by_status
    counted = by_status.draft + by_status.active + by_status.mitigated + by_status.accepted
    expect(stats.total_risks >= 3 and counted == stats.total_risks, f"stats {stats.to_dict()}")
    expect([len(row) for row in matrix.counts] == [5] * 5, "a 5 × 5 matrix")
    expect(sum(map(sum, matrix.counts)) == matrix.total == stats.total_risks, "matrix total")
    expect(matrix.counts[4 - 1][3 - 1] >= 1, "Alpha counts at impact 4, probability 3")
    expect(trends.days == 7 and len(trends.points) == 7, f"{len(trends.points)} points")
    today = trends.points[-1]
    expect(today.day == datetime.datetime.now(datetime.UTC).date(), f"last day {today.day!r}, read as a date")
    expect(today.created >= 3, f"{today.created} created today")
