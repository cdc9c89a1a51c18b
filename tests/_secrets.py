"""Looking for a secret where it must not be: every file under a directory, byte by byte (binary files included)."""

from __future__ import annotations

from pathlib import Path


def files_holding(root: Path, secret: str) -> list[Path]:
    """Every file under ``root`` whose bytes hold ``secret``, binary files included."""
    needle = secret.encode()
    return sorted(f for f in root.rglob("*") if f.is_file() and needle in f.read_bytes())
