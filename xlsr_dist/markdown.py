"""Markdown tables in the layout of transformers' model cards: the model card (export), the error report and the
evaluation summary (evaluation/) write their tables through here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def maybe_round(value: Any, decimals: int = 4) -> str:
    """The HF Trainer card's number format: at most ``decimals`` decimals, short values as they are (1.0, 0.849)."""
    if isinstance(value, float):
        text = str(value)
        if "." in text and "e" not in text and len(text.split(".")[1]) > decimals:
            return f"{value:.{decimals}f}"
        if "e" in text:
            return f"{value:.{decimals}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Same layout as transformers' modelcard.make_markdown_table (the seed card's table)."""
    cells = [[maybe_round(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "".join(f"| {v}" + " " * (w - len(v) + 1) for v, w in zip(values, widths)) + "|\n"

    return line(header) + "".join("|:" + "-" * w + ":" for w in widths) + "|\n" + "".join(line(r) for r in cells)
