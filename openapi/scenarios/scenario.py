"""What the Python scenarios of openapi/clients.sh share: where the API is, and how steps report.

Each scenario drives one generated client through the same story (docs/clients.md lists it). It
stops at the first step that fails, printing the step and the reason, and exits non-zero.
"""

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

BASE_URL = os.environ["OPENRISK_BASE_URL"]
TOKEN = os.environ["OPENRISK_TOKEN"]

# Score factor of a HIGH asset (api/src/model.rs, `Criticality`).
HIGH_CRITICALITY_FACTOR = 1.25


def tag_for(client: str) -> str:
    """A tag that only this run's risks from `client` carry, so that list filters see nothing else."""
    return f"{client}-{os.environ['OPENRISK_RUN_ID']}"


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
