"""A test that needs SLURM or Chromium either proves its claim, or says which claim it left unproven; where the
system tests are required (XLSR_REQUIRE_SYSTEM_TESTS=1: `make test` as root with apt, CI) it fails instead."""

from __future__ import annotations

import pytest

from tests._system import STRICT_VARIABLE, cannot_run

CLAIM = "the ranks requeue after USR1"


def test_without_the_software_the_skip_names_the_unproven_claim_and_why() -> None:
    with pytest.raises(pytest.skip.Exception) as skipped:
        cannot_run(CLAIM, "sbatch not installed", env={})
    assert str(skipped.value) == f"UNPROVEN: {CLAIM} (sbatch not installed)"


def test_where_system_tests_are_required_a_missing_program_fails_the_run() -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        cannot_run(CLAIM, "sbatch not installed", env={STRICT_VARIABLE: "1"})
    assert CLAIM in str(failed.value) and "sbatch not installed" in str(failed.value)
