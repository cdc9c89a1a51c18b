"""Fixtures shared by every test module: a real MLflow server, a real S3-compatible server and a real one-node SLURM
cluster (all started on first use, session-scoped where starting them is slow)."""

from tests._mlflow_server import mlflow_server, mlflow_server_factory
from tests._s3_server import s3_server
from tests._slurm import slurm_cluster
from tests._trained_demo import trained_demo_model

__all__ = ["mlflow_server", "mlflow_server_factory", "s3_server", "slurm_cluster", "trained_demo_model"]
