"""Secrets kept out of MLflow and logs: names that hold credentials, and credential values redacted in any text.

A setting is dropped when its name says it holds a credential (``is_secret_name``); in any other text, values of
secret environment variables, well-known token shapes and URL passwords become ``REDACTED`` (``redact_text``).
``redact_values`` does both to a JSON-like record (train_config.json, run_info.json), keeping its other values' types.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"

_SECRET_WORDS = frozenset(
    {
        "token",
        "tokens",
        "password",
        "passwd",
        "secret",
        "secrets",
        "credential",
        "credentials",
        "auth",
        "authorization",
        "apikey",
        "passphrase",
        "cookie",
        "privatekey",
        "accesskey",
        "secretkey",
    }
)
_SECRET_PAIRS = frozenset(
    {
        ("api", "key"),
        ("access", "key"),
        ("secret", "key"),
        ("private", "key"),
        ("account", "key"),
        ("session", "key"),
        ("signing", "key"),
        ("encryption", "key"),
        ("client", "secret"),
    }
)
# "token" next to these words is a vocabulary notion (pad_token_id, max_tokens), not a credential.
_TOKEN_NOT_SECRET = frozenset(
    {
        "id",
        "ids",
        "type",
        "types",
        "length",
        "len",
        "count",
        "max",
        "min",
        "num",
        "pad",
        "bos",
        "eos",
        "unk",
        "cls",
        "sep",
        "mask",
        "special",
        "per",
        "limit",
        "embedding",
        "embeddings",
        "vocab",
        "delimiter",
    }
)
_TOKEN_WORDS = frozenset({"token", "tokens"})

_SECRET_VALUE_PATTERNS = [
    re.compile(p)
    for p in (
        r"\bhf_[A-Za-z0-9]{20,}",  # Hugging Face
        r"\bapi_org_[A-Za-z0-9]{20,}",
        r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b",  # AWS access key ids
        r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub
        r"\bgithub_pat_[A-Za-z0-9_]{30,}",
        r"\bsk-[A-Za-z0-9_-]{20,}",  # OpenAI-style
        r"\bxox[abprs]-[A-Za-z0-9-]{10,}",  # Slack
        r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",  # JWT
        # AWS secret access key shape: 40 base64 characters with both cases (a git sha is lower-case hex).
        r"(?<![A-Za-z0-9/+])(?=[A-Za-z0-9/+]{0,39}[a-z])(?=[A-Za-z0-9/+]{0,39}[A-Z])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])",
    )
]
_URL_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+):(?P<pw>[^@/\s]+)@")
_KNOWN_SECRET_ENV = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "WANDB_API_KEY",
    "DATABRICKS_TOKEN",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "GOOGLE_APPLICATION_CREDENTIALS_JSON",
)


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def is_secret_name(name: str) -> bool:
    """True for names that hold credentials: hf_token, MLFLOW_TRACKING_PASSWORD, aws_secret_access_key, ..."""
    words = _words(name)
    for i, w in enumerate(words):
        if w in _TOKEN_WORDS:
            neighbours = set(words[max(0, i - 1) : i] + words[i + 1 : i + 2])
            if not neighbours & _TOKEN_NOT_SECRET:
                return True
        elif w in _SECRET_WORDS:
            return True
        if i + 1 < len(words) and (w, words[i + 1]) in _SECRET_PAIRS:
            return True
    return False


def _secret_env_values(env: Mapping[str, str] | None = None) -> list[str]:
    e = os.environ if env is None else env
    # Under 4 characters a "secret" would redact digits and letters all over the config; such a password is
    # not protected by redaction anyway.
    values = {e[k] for k in _KNOWN_SECRET_ENV if len(e.get(k, "")) >= 4}
    # Short values ("1", "true") of a secret-looking variable would redact half the config; real secrets are long.
    values |= {v for k, v in e.items() if len(v) >= 6 and is_secret_name(k)}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, env: Mapping[str, str] | None = None) -> str:
    """``text`` with credentials replaced by <redacted>: secret environment values, token shapes, URL passwords."""
    for value in _secret_env_values(env):
        text = text.replace(value, REDACTED)
    for pattern in _SECRET_VALUE_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)


def redact_values(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """JSON-like ``value`` without the mapping entries whose names hold credentials and with every string redacted
    (``redact_text``); numbers, booleans and None stay as they are."""
    if isinstance(value, Mapping):
        return {k: redact_values(v, env) for k, v in value.items() if not is_secret_name(str(k))}
    if isinstance(value, (list, tuple)):
        return [redact_values(v, env) for v in value]
    if isinstance(value, str):
        return redact_text(value, env)
    return value
