"""Fixtures shared by every test module: a real MLflow server and a real one-node SLURM cluster (both started on
first use, session-scoped where starting them is slow)."""

from tests._mlflow_server import mlflow_server, mlflow_server_factory
from tests._slurm import slurm_cluster

__all__ = ["mlflow_server", "mlflow_server_factory", "slurm_cluster"]
