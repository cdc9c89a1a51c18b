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
