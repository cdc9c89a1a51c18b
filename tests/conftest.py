"""Fixtures shared by every test module: a real MLflow server, a real S3-compatible server, a real one-node SLURM
cluster and a real sshd on 127.0.0.1 (all started on first use, session-scoped where starting them is slow). And the
rule that a green CI run proved every claim: with XLSR_REQUIRE_SYSTEM_TESTS=1 a skip at run time is a failure
(tests/_system.py)."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests._mlflow_server import mlflow_server, mlflow_server_factory
from tests._s3_server import s3_server
from tests._slurm import slurm_cluster
from tests._sshd import local_ssh
from tests._system import strict_report
from tests._trained_demo import trained_demo_model

__all__ = ["local_ssh", "mlflow_server", "mlflow_server_factory", "s3_server", "slurm_cluster", "trained_demo_model"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    return strict_report((yield))
