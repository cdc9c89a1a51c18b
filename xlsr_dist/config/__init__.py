"""The one typed config tree of xlsr_dist: its sections and their documented fields (tree.py), flags and config files
(flags.py), validation (validate.py), batch arithmetic (batch.py), the metric names runs are judged by (metrics.py)
and the flags' documentation made from the fields' docstrings (docs.py, ``python -m xlsr_dist.config
--write-docs``). A basic: imports only text/ and atomic, never torch.distributed nor training/; every room may import
it. Validation collects every problem at once and names the flag to change (ConfigError, errors.py)."""

from xlsr_dist.config.batch import DEFAULT_MAX_MICRO_BATCH, BatchPlan, plan_batches, valid_world_sizes
from xlsr_dist.config.errors import ConfigError
from xlsr_dist.config.flags import FLAGS, argparser, build_config, parse_args, read_config_file
from xlsr_dist.config.metrics import METRICS, PRIMARY_METRICS, metric_key, metric_problems
from xlsr_dist.config.tree import (
    REFERENCE_GLOBAL_BATCH,
    SECTIONS,
    Config,
    DataConfig,
    ModelConfig,
    TrackingConfig,
    TrainConfig,
    best_model_metric,
    flatten,
    primary_metric,
)
from xlsr_dist.config.validate import ARCHITECTURES, REPO_ROOT, resolve_path, validate

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_MAX_MICRO_BATCH",
    "FLAGS",
    "METRICS",
    "PRIMARY_METRICS",
    "REFERENCE_GLOBAL_BATCH",
    "REPO_ROOT",
    "SECTIONS",
    "BatchPlan",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrackingConfig",
    "TrainConfig",
    "argparser",
    "best_model_metric",
    "build_config",
    "flatten",
    "metric_key",
    "metric_problems",
    "parse_args",
    "plan_batches",
    "primary_metric",
    "read_config_file",
    "resolve_path",
    "valid_world_sizes",
    "validate",
]
