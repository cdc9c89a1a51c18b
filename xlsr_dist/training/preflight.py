"""What the flags point at, checked on every rank before any process group or model exists: the data locations,
the pretrained weights and the checkpoint to resume from.

Each problem names the flag to change and all are reported together as one ConfigError of scope "node": they depend
on what this machine sees (its files, its Hugging Face cache), so the first rank of each node reports them.
"""

from __future__ import annotations

from xlsr_dist.config import Config, ConfigError
from xlsr_dist.data.locations import shard_paths
from xlsr_dist.training import checkpoint


def problems(cfg: Config) -> list[str]:
    """Every problem with the data locations, weights and resume checkpoint ``cfg`` names."""
    found: list[str] = []
    locations = [("--eval_data", location) for _, location in cfg.data.eval_sets()]
    if cfg.data.train_data != "demo":
        locations[:0] = [("--train_data", location) for location, _ in cfg.data.train_sets()]
    for flag, location in locations:
        try:
            shard_paths(flag, location)
        except ConfigError as exc:
            found += exc.problems
    if not cfg.model.architecture:
        # Here, not at the top: transformers takes seconds to import, and only a pretrained checkpoint needs it.
        from xlsr_dist.model import missing_weights

        missing = missing_weights(cfg.model.model_name_or_path)
        if missing:
            found.append(missing)
    spec = cfg.train.resume_from_checkpoint
    try:
        resume_from = checkpoint.resolve_resume(spec, cfg.train.output_dir)
    except checkpoint.CheckpointError as exc:
        found.append(str(exc))
        resume_from = None
    if resume_from is not None:
        try:
            checkpoint.verify_loadable(resume_from)
        except checkpoint.CheckpointError as exc:
            found.append(f"--resume_from_checkpoint {spec}: {exc}")
    return found


def check(cfg: Config) -> None:
    """Raise one ConfigError listing every problem ``problems`` finds."""
    found = problems(cfg)
    if found:
        raise ConfigError(found, scope="node")
