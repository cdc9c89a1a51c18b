"""Flags and config files -> a validated Config: coercion to each field's type, unknown names, argparse's own errors,
all reported together as one ConfigError.

Every field of the tree is a flag of the same name (HF TrainingArguments / run_speech_recognition_ctc names where the
concept is the same) and a key of the ``--config`` YAML/JSON file; flags win over the file. ``--help`` groups the
flags by section and prints each field's docstring (xlsr_dist.config.docs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, get_args, get_type_hints

from xlsr_dist.config import docs
from xlsr_dist.config.errors import ConfigError
from xlsr_dist.config.tree import SECTIONS, Config, section_classes
from xlsr_dist.config.validate import validate

PROG = "python -m xlsr_dist.train"


def _flag_owners() -> dict[str, tuple[str, type]]:
    owners: dict[str, tuple[str, type]] = {}
    for section, cls in section_classes().items():
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            owners[f.name] = (section, hints[f.name])
    return owners


FLAGS = _flag_owners()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _unset_or_kind(kind: Any) -> tuple[bool, type]:
    """(may it be unset, its type): ``bool | None`` -> (True, bool)."""
    members = get_args(kind)
    if type(None) in members:
        return True, next(m for m in members if m is not type(None))
    return False, kind


def _number(kind: type, value: Any) -> int | float:
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None


# String flags whose config-file form may be a YAML list, read as the comma-separated flag value
# (train_data: [/data/a=0.7, /data/b=0.3]; speed_factors: [0.9, 1.0, 1.1]).
COMMA_LISTS = ("train_data", "speed_factors")


def _coerce(name: str, kind: type, value: Any, problems: list[str]) -> Any:
    unsettable, kind = _unset_or_kind(kind)
    if unsettable and (value is None or str(value).strip().lower() in ("", "none")):
        return None
    try:
        if kind is bool:
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if kind in (int, float):
            return _number(kind, value)
        if isinstance(value, list) and name in COMMA_LISTS:
            return ",".join(str(v) for v in value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return "".join(value)  # HF's list form, e.g. chars_to_ignore: [",", "?", "."]
        return str(value)
    except (TypeError, ValueError) as exc:
        problems.append(f"--{name}: {exc}")
        return None


def read_config_file(path: str) -> dict[str, Any]:
    """A flat mapping of flag names from YAML or JSON (sections as nested mappings are accepted too)."""
    import yaml

    try:
        text = Path(path).read_text()
        raw = json.loads(text) if path.endswith(".json") else (yaml.safe_load(text) or {})
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ConfigError(
            [f"--config {path}: cannot be read as {'JSON' if path.endswith('.json') else 'YAML'} ({reason})"]
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"--config {path}: expected a mapping of flag names to values"])
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def build_config(values: dict[str, Any], source: str = "flags", problems: Sequence[str] = ()) -> Config:
    """Config from flag-name -> value; unknown names, values of the wrong type and invalid settings are all reported
    together (``problems``: ones found before, e.g. by the argument parser). The ConfigError carries the Config of
    the values that parsed (``ConfigError.config``)."""
    found = list(problems)
    unparsed: list[str] = []
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, value in values.items():
        if name not in FLAGS:
            found.append(f"--{name}: unknown setting (from {source}); see `{PROG} --help`")
            continue
        section, kind = FLAGS[name]
        known_problems = len(found)
        coerced = _coerce(name, kind, value, found)
        if len(found) == known_problems:
            sections[section][name] = coerced
        else:
            unparsed.append(name)
    classes = section_classes()
    cfg = Config(**{section: classes[section](**sections[section]) for section in SECTIONS})
    # The settings that parsed are validated too (a flag that did not parse keeps its default meanwhile, so a
    # problem naming it would be about that default, not about what the user typed: left out).
    try:
        validate(cfg)
    except ConfigError as invalid:
        found += [p for p in invalid.problems if not any(re.search(rf"--{n}(?!\w)", p) for n in unparsed)]
    if found:
        raise ConfigError(found, config=cfg)
    return cfg


class _ArgumentParser(argparse.ArgumentParser):
    """argparse's own errors (a flag without its value) as a ConfigError: reported like every other problem, on
    rank 0 only, without the usage text."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError([f"{message} (see `{self.prog} --help`)"])


def argparser() -> argparse.ArgumentParser:
    """The training command's parser: one argument group per section, each flag's help its field's docstring."""
    parser = _ArgumentParser(
        prog=PROG,
        description="Fine-tune wav2vec2 XLS-R with CTC on 1-8 ranks (global batch 8) with DeepSpeed ZeRO-2. "
        "Each flag may also be a key of the --config file; flags given here win. docs/flags.md lists the same.",
    )
    parser.add_argument("--config", default="", help="YAML/JSON file of flag values (flags given here win)")
    # DeepSpeed's launcher appends --local_rank=N; the rank itself is read from the environment (world.py).
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    defaults = Config().flat()
    groups = {s: parser.add_argument_group(s, docs.section_doc(s)) for s in SECTIONS}
    for name, (section, kind) in FLAGS.items():
        groups[section].add_argument(
            f"--{name}",
            default=None,
            metavar=_unset_or_kind(kind)[1].__name__.upper(),
            help=docs.flag_help(name, defaults[name]),
        )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Flags (and an optional --config file) -> validated Config; raises ConfigError listing every problem."""
    args, extra = argparser().parse_known_args(argv)
    problems = [f"unrecognized argument(s): {' '.join(extra)} (see `{PROG} --help`)"] if extra else []
    values: dict[str, Any] = {}
    if args.config:
        if not Path(args.config).is_file():
            raise ConfigError([*problems, f"--config {args.config}: no such file"])
        values.update(read_config_file(args.config))
    source = f"--config {args.config}" if args.config else "flags"
    for name in FLAGS:
        given = getattr(args, name)
        if given is not None:
            values[name] = given
    return build_config(values, source=source, problems=problems)
