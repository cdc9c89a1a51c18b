"""Artifacts to MLflow: text files holding a secret are uploaded as a redacted copy, and every upload (tracker,
replay, export, compare, reference) goes through ``upload_artifact``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from xlsr_dist.tracking.redact import redact_text

# Redacted copies waiting for upload, under the run's --output_dir; removed once nothing is left to send.
STAGING_DIR = ".mlflow_staging"

_TEXT_SUFFIXES = frozenset(
    {
        ".json",
        ".jsonl",
        ".yaml",
        ".yml",
        ".txt",
        ".md",
        ".cfg",
        ".ini",
        ".toml",
        ".log",
        ".csv",
        ".tsv",
        ".sh",
        ".py",
        ".env",
        ".conf",
    }
)
_MAX_REDACT_BYTES = 64 * 1024 * 1024


def stage_artifact(local_path: str | Path, staging_root: Path) -> Path:
    """The path to upload for ``local_path``: a redacted copy under ``staging_root`` when a text file (or a text
    file inside a directory) holds a secret, else ``local_path`` itself."""
    src = Path(local_path)
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    redacted: dict[Path, str] = {}
    for f in files:
        if f.suffix.lower() not in _TEXT_SUFFIXES or f.stat().st_size > _MAX_REDACT_BYTES:
            continue
        try:
            text = f.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        clean = redact_text(text)
        if clean != text:
            redacted[f] = clean
    if not redacted:
        return src
    staging_root.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(dir=staging_root)) / src.name
    if src.is_file():
        dest.write_text(redacted[src])
    else:
        shutil.copytree(src, dest)
        for f, clean in redacted.items():
            (dest / f.relative_to(src)).write_text(clean)
    return dest


def upload_artifact(client: Any, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> bool:
    """Upload a file or a directory's contents to ``run_id`` under ``artifact_path``; False when the path no
    longer exists (nothing uploaded)."""
    path = Path(local_path)
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    elif path.is_file():
        client.log_artifact(run_id, str(path), artifact_path)
    else:
        return False
    return True
