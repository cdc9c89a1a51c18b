"""What went wrong on an evaluated set: its worst utterances, the words most often substituted, inserted and deleted
(from jiwer's word alignments), and WER by utterance duration; written as report.json and a short report.md."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jiwer

from xlsr_dist import atomic
from xlsr_dist.evaluation.scoring import UtteranceScore
from xlsr_dist.markdown import markdown_table

JSON_NAME = "report.json"
MARKDOWN_NAME = "report.md"
# Seconds; the last bucket is open-ended.
DURATION_EDGES = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, math.inf)


def word_edits(scores: Sequence[UtteranceScore]) -> tuple[Counter[tuple[str, str]], Counter[str], Counter[str]]:
    """(substituted (reference word, hypothesis word) pairs, inserted words, deleted words), each counted."""
    substitutions: Counter[tuple[str, str]] = Counter()
    insertions: Counter[str] = Counter()
    deletions: Counter[str] = Counter()
    if not scores:
        return substitutions, insertions, deletions
    out = jiwer.process_words([s.reference for s in scores], [s.hypothesis for s in scores])
    for ref, hyp, chunks in zip(out.references, out.hypotheses, out.alignments):
        for c in chunks:
            if c.type == "substitute":
                # jiwer's substitute chunks pair the two sides word for word.
                substitutions.update(zip(ref[c.ref_start_idx : c.ref_end_idx], hyp[c.hyp_start_idx : c.hyp_end_idx]))
            elif c.type == "insert":
                insertions.update(hyp[c.hyp_start_idx : c.hyp_end_idx])
            elif c.type == "delete":
                deletions.update(ref[c.ref_start_idx : c.ref_end_idx])
    return substitutions, insertions, deletions


def _bucket_label(low: float, high: float) -> str:
    return f"{low:g}-{high:g} s" if math.isfinite(high) else f">= {low:g} s"


def wer_by_duration(scores: Sequence[UtteranceScore]) -> list[dict[str, Any]]:
    """Non-empty duration buckets (DURATION_EDGES) with their utterances, words, word errors and WER."""
    rows = []
    for low, high in zip(DURATION_EDGES, DURATION_EDGES[1:]):
        members = [s for s in scores if low <= s.seconds < high]
        if not members:
            continue
        words = sum(s.words for s in members)
        errors = sum(s.word_errors for s in members)
        rows.append(
            {
                "seconds": _bucket_label(low, high),
                "utterances": len(members),
                "words": words,
                "word_errors": errors,
                "wer": errors / max(words, 1),
            }
        )
    return rows


def worst_utterances(scores: Sequence[UtteranceScore], n: int) -> list[UtteranceScore]:
    """The ``n`` utterances with the most word errors (they weigh most in the set's WER), then most char errors."""
    return sorted(scores, key=lambda s: (-s.word_errors, -s.char_errors, s.id))[:n]


def build(scores: Sequence[UtteranceScore], summary: Mapping[str, Any], top: int = 20) -> dict[str, Any]:
    """The report: ``summary`` (set, model, metrics ...) followed by the error analysis of ``scores``."""
    substitutions, insertions, deletions = word_edits(scores)
    return {
        **summary,
        "worst_utterances": [
            {**s.to_dict(), "wer": s.word_errors / max(s.words, 1)} for s in worst_utterances(scores, top)
        ],
        "substitutions": [
            {"reference": r, "hypothesis": h, "count": n} for (r, h), n in substitutions.most_common(top)
        ],
        "insertions": [{"word": w, "count": n} for w, n in insertions.most_common(top)],
        "deletions": [{"word": w, "count": n} for w, n in deletions.most_common(top)],
        "edit_totals": {
            "substitutions": sum(substitutions.values()),
            "insertions": sum(insertions.values()),
            "deletions": sum(deletions.values()),
        },
        "wer_by_duration": wer_by_duration(scores),
    }


# (heading, key) of the set's metrics, in the order the console table and report.md show them.
METRIC_COLUMNS = (
    ("utterances", "utterances"),
    ("audio hours", "audio_hours"),
    ("WER", "wer"),
    ("CER", "cer"),
    ("WER LM", "wer_lm"),
    ("CER LM", "cer_lm"),
    ("loss", "loss"),
    ("RTF", "rtf"),
)


def _metric(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metric_cells(metrics: Mapping[str, float]) -> list[str]:
    """The METRIC_COLUMNS cells of one set: a count as an integer, rates to 4 decimals, '-' where absent (loss)."""
    return [
        str(int(metrics[key])) if key == "utterances" else _metric(metrics[key]) if key in metrics else "-"
        for _, key in METRIC_COLUMNS
    ]


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return markdown_table(header, rows) if rows else "(none)\n"


def markdown(report: Mapping[str, Any], top: int = 10) -> str:
    m = report.get("metrics", {})
    lines = [
        f"# Evaluation: {report.get('set', '?')}",
        "",
        f"Model: `{report.get('model', '?')}`"
        + (f" (step {report['step']})" if report.get("step") is not None else ""),
        f"Data: `{report.get('data', '?')}`",
        "",
        markdown_table([heading for heading, _ in METRIC_COLUMNS], [metric_cells(m)]),
    ]
    if report.get("unrepresentable_characters"):
        chars = ", ".join(f"{c!r} x{n}" for c, n in report["unrepresentable_characters"].items())
        lines += [f"Characters the model's vocabulary cannot represent (scored as errors): {chars}", ""]
    if report.get("skipped"):
        lines += ["Not scored: " + ", ".join(f"{n} {why}" for why, n in report["skipped"].items()), ""]
    lines += [
        "## Worst utterances",
        "",
        _table(
            ["id", "word errors", "WER", "reference", "hypothesis"],
            [
                [u["id"], u["word_errors"], _metric(u["wer"]), u["reference"], u["hypothesis"]]
                for u in report["worst_utterances"][:top]
            ],
        ),
        "## Most frequent substitutions",
        "",
        _table(
            ["reference", "hypothesis", "count"],
            [[s["reference"], s["hypothesis"], s["count"]] for s in report["substitutions"][:top]],
        ),
        "## Most frequent insertions",
        "",
        _table(["word", "count"], [[w["word"], w["count"]] for w in report["insertions"][:top]]),
        "## Most frequent deletions",
        "",
        _table(["word", "count"], [[w["word"], w["count"]] for w in report["deletions"][:top]]),
        "## WER by duration",
        "",
        _table(
            ["duration", "utterances", "words", "word errors", "WER"],
            [
                [b["seconds"], b["utterances"], b["words"], b["word_errors"], _metric(b["wer"])]
                for b in report["wer_by_duration"]
            ],
        ),
    ]
    return "\n".join(lines)


def write(report: Mapping[str, Any], set_dir: str | Path) -> tuple[Path, Path]:
    """report.json and report.md in ``set_dir``; returns their paths."""
    root = Path(set_dir)
    atomic.write_json(root / JSON_NAME, report)
    atomic.write_text(root / MARKDOWN_NAME, markdown(report))
    return root / JSON_NAME, root / MARKDOWN_NAME
