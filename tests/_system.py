"""Tests that need system software pip cannot install (SLURM + munge for tests/test_slurm.py, Chromium for
tests/test_mlflow_ui.py). Where it is missing they skip naming the claim left unproven; with
XLSR_REQUIRE_SYSTEM_TESTS=1 (`make test` as root with apt, which installs the software first, and .ci/run) they fail
instead, so a green run is one that proved every claim."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NoReturn

import pytest

STRICT_VARIABLE = "XLSR_REQUIRE_SYSTEM_TESTS"


def cannot_run(claim: str, reason: str, env: Mapping[str, str] | None = None) -> NoReturn:
    """End the test that would prove ``claim``: a failure when system tests are required, else a skip that says
    what stays unproven and why."""
    if (os.environ if env is None else env).get(STRICT_VARIABLE) == "1":
        pytest.fail(f"{claim}: cannot run here ({reason}), and {STRICT_VARIABLE}=1 requires it", pytrace=False)
    pytest.skip(f"UNPROVEN: {claim} ({reason})")


def strict_report(report: pytest.TestReport) -> pytest.TestReport:
    """A test's report as CI must count it: with system tests required, a skip decided at run time (pytest.skip in a
    test or fixture, a skipif marker) proves nothing, so it becomes a failure that names it (an error when it
    happened in set-up, as pytest counts failures there). An expected failure (xfail) is left as it is."""
    if report.skipped and not hasattr(report, "wasxfail") and os.environ.get(STRICT_VARIABLE) == "1":
        longrepr = report.longrepr
        reason = (longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped at run time ({reason}), and {STRICT_VARIABLE}=1 requires every test to run"
    return report
