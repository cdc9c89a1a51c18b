"""A test that needs SLURM or Chromium either proves its claim, or says which claim it left unproven; where the
system tests are required (XLSR_REQUIRE_SYSTEM_TESTS=1: `make test` as root with apt, CI) it fails instead."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests._dist import ROOT, base_env
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


SKIPPING_TESTS = """
import pytest


@pytest.fixture
def unavailable():
    pytest.skip("fixture cannot start its server")


def test_skips_in_its_body():
    pytest.skip("kernel says no")


def test_skips_in_a_fixture(unavailable):
    pass


@pytest.mark.skipif(True, reason="decided by a marker")
def test_skipped_by_a_marker():
    pass


def test_passes():
    pass
"""


def _run_tiny_suite(tmp_path: Path, strict: str) -> tuple[int, str]:
    """A subprocess pytest over a small test file, with the suite's own conftest (tests/conftest.py) as a plugin."""
    (tmp_path / "test_tiny.py").write_text(SKIPPING_TESTS)
    env = base_env(**{STRICT_VARIABLE: strict, "PYTHONPATH": str(ROOT)})
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-rA", "-p", "no:cacheprovider", "test_tiny.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def test_where_system_tests_are_required_a_skip_at_run_time_fails_the_run(tmp_path: Path) -> None:
    code, out = _run_tiny_suite(tmp_path, "1")
    assert code == 1, out
    # A skip in set-up (fixture, marker) fails as an error, as any failure in set-up does.
    assert out.splitlines()[-1].startswith("1 failed, 1 passed, 2 errors in "), out
    for outcome, name, reason in (
        ("FAILED", "test_skips_in_its_body", "kernel says no"),
        ("ERROR", "test_skips_in_a_fixture", "fixture cannot start its server"),
        ("ERROR", "test_skipped_by_a_marker", "decided by a marker"),
    ):
        assert f"{outcome} test_tiny.py::{name} - " in out, out
        assert f"skipped at run time ({reason}), and {STRICT_VARIABLE}=1 requires every test to run" in out, out


def test_elsewhere_a_skip_at_run_time_stays_a_skip(tmp_path: Path) -> None:
    code, out = _run_tiny_suite(tmp_path, "0")
    assert code == 0, out
    assert out.splitlines()[-1].startswith("1 passed, 3 skipped in "), out
