"""What MLflow accepts: its size limits, valid keys, params and tags without secrets, numeric metrics, and the
params a continued run may still log.

A value MLflow refuses turns a whole batch into a permanent error, so everything is made acceptable before sending.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from xlsr_dist.config import flatten
from xlsr_dist.tracking.redact import is_secret_name, redact_text

log = logging.getLogger(__name__)

# MLflow's own limits (mlflow.utils.validation); exceeding them turns a whole batch into a permanent error.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000


def valid_key(key: str) -> str:
    # MLflow refuses characters outside [/\w.\- :] and names that normalise to another path.
    key = re.sub(r"[^/\w.\- :]", "_", str(key)).strip("/ ") or "_"
    key = re.sub(r"/+", "/", key).replace("/./", "/").replace("..", "_")
    return key[:MAX_KEY]


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def sanitize(values: Mapping[str, Any], limit: int) -> tuple[dict[str, str], list[str]]:
    """Flatten nested mappings with dotted keys, drop secret-named entries, redact secret values, truncate.

    Returns (clean, dropped names)."""
    flat: dict[str, Any] = {}
    flatten("", values, flat)
    clean: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in flat.items():
        if is_secret_name(key):
            dropped.append(key)
            continue
        # Redact before truncating so a cut can never leave half a secret behind.
        clean[valid_key(key)] = redact_text(_as_text(value))[:limit]
    return clean, dropped


def _to_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def clean_metrics(metrics: Mapping[str, Any], warned: set[str]) -> dict[str, float]:
    """Numeric values under MLflow-valid names; a non-numeric value is skipped (warned about once per name)."""
    rows: dict[str, float] = {}
    for key, value in metrics.items():
        number = _to_float(value)
        if number is None:
            if key not in warned:
                warned.add(key)
                log.warning("metric %r has non-numeric value %r; not logged", key, value)
            continue
        rows[valid_key(key)] = number
    return rows


def params_to_relog(existing: Mapping[str, str], params: Mapping[str, str]) -> dict[str, str]:
    """Params to log when continuing a run: new ones as they are, changed ones under ``resume.<name>``.

    MLflow refuses to change a logged param, so identical ones are skipped and a ``resume.`` entry that already
    holds another value (a second resume that changed it again) is skipped with a warning."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if key not in existing:
            out[key] = value
        elif existing[key] != value:
            alt = valid_key("resume." + key)
            if alt not in existing:
                out[alt] = value
            elif existing[alt] != value:
                log.warning(
                    "param %s changed again on resume (%r -> %r); MLflow keeps the first values",
                    key,
                    existing[alt],
                    value,
                )
    return out
