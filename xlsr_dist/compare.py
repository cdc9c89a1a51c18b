"""A training run against the reference model card: a table at shared steps and a plot, during or after training.

`python -m xlsr_dist.compare [RUN] [--tracking_uri URI] [--experiment_name NAME] [--out PNG]`
RUN is a run id, a run name, or 'latest' (the newest non-reference run of the experiment; the default).
Rows are the reference steps the run has reached plus the run's own evaluation steps. A run's value at a step is
the one logged there, or at the nearest earlier step within its logging interval ('-' if none). A reference value
between the card's steps is linearly interpolated and marked '~'. The plot is logged as an artifact of the run.
A run whose primary metric is CER (a language written without spaces between words: zh, ja, th, ...) gets CER as
its first column and plot; its WER is still shown, with a note that it is not meaningful there.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlsr_dist.config import TrackingConfig
from xlsr_dist.reference import REFERENCE_MODEL, reference_series
from xlsr_dist.text import writes_words
from xlsr_dist.tracking import (
    REFERENCE_TAG,
    open_client,
    redact_text,
    resolve_experiment,
    resolve_tracking_uri,
    upload_artifact,
)

COMPARED = ("loss", "eval_loss", "eval_wer")
LABELS = {"loss": "training loss", "eval_loss": "eval loss", "eval_wer": "WER", "eval_cer": "CER"}
# Which flag sets each metric's logging interval.
INTERVAL_PARAM = {
    "loss": "logging_steps",
    "eval_loss": "eval_steps",
    "eval_wer": "eval_steps",
    "eval_cer": "eval_steps",
    "epoch": "logging_steps",
}
PRIMARY_METRIC_TAG = "xlsr_dist.primary_metric"
ARTIFACT_DIR = "compare"


class CompareError(RuntimeError):
    pass


@dataclass(frozen=True)
class Cell:
    run: float | None
    reference: float | None
    interpolated: bool

    @property
    def difference(self) -> float | None:
        if self.run is None or self.reference is None:
            return None
        return self.run - self.reference


@dataclass(frozen=True)
class Row:
    step: int
    cells: dict[str, Cell]


def value_at(series: dict[int, float], step: int, interval: int) -> float | None:
    """The value logged at ``step``, else at the nearest earlier step less than ``interval`` before it."""
    if step in series:
        return series[step]
    earlier = [s for s in series if s < step]
    if not earlier:
        return None
    nearest = max(earlier)
    return series[nearest] if step - nearest < interval else None


def interpolate(series: dict[int, float], step: int) -> tuple[float | None, bool]:
    """(value, interpolated?): exact at a known step, linear between two known steps, None outside them."""
    if step in series:
        return series[step], False
    below = [s for s in series if s < step]
    above = [s for s in series if s > step]
    if not below or not above:
        return None, False
    lo, hi = max(below), min(above)
    frac = (step - lo) / (hi - lo)
    return series[lo] + frac * (series[hi] - series[lo]), True


def logging_interval(series: dict[int, float], param: str | None) -> int:
    """The interval a metric was logged at: its flag when recorded, else the median gap between logged steps."""
    if param:
        try:
            value = int(float(param))
            if value > 0:
                return value
        except ValueError:
            pass
    steps = sorted(series)
    gaps = [b - a for a, b in zip(steps, steps[1:]) if b > a]
    return int(statistics.median(gaps)) if gaps else 1


def compared_metrics(primary_metric: str) -> tuple[str, ...]:
    """The metrics of the table and plot: COMPARED, led by CER where it is the run's primary metric."""
    return ("eval_cer", *COMPARED) if primary_metric == "eval_cer" else COMPARED


def run_primary_metric(run: Any) -> str:
    """The primary metric a training run recorded (tag, else param); runs from before it existed: eval_wer."""
    return run.data.tags.get(PRIMARY_METRIC_TAG) or run.data.params.get("primary_metric") or "eval_wer"


def compare_rows(
    run: dict[str, dict[int, float]],
    reference: dict[str, dict[int, float]],
    params: dict[str, str],
    metrics: Sequence[str] = COMPARED,
) -> list[Row]:
    """Rows at the reference steps the run reached and at the run's evaluation steps; cells in ``metrics`` order."""
    reached = max((s for series in run.values() for s in series), default=0)
    eval_steps = set(run.get("eval_loss", {})) | set(run.get("eval_wer", {})) | set(run.get("eval_cer", {}))
    ref_steps = {s for series in reference.values() for s in series if s <= reached}
    rows = []
    for step in sorted(ref_steps | eval_steps):
        cells = {}
        for key in metrics:
            series = run.get(key, {})
            interval = logging_interval(series, params.get(INTERVAL_PARAM[key]))
            ref, approx = interpolate(reference.get(key, {}), step)
            cells[key] = Cell(value_at(series, step, interval), ref, approx)
        rows.append(Row(step, cells))
    return rows


def _fmt(value: float | None, approx: bool = False, signed: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:+.4f}" if signed else f"{value:.4f}"
    return ("~" + text) if approx else text


def format_table(rows: Sequence[Row]) -> str:
    """A fixed-width table: step, then run / reference / difference for each compared metric (the rows' order)."""
    metrics = list(rows[0].cells) if rows else list(COMPARED)
    header = ["step"]
    for key in metrics:
        header += [f"{key} run", "reference", "diff"]
    lines = [header]
    for row in rows:
        line = [str(row.step)]
        for key in metrics:
            c = row.cells[key]
            line += [_fmt(c.run), _fmt(c.reference, c.interpolated), _fmt(c.difference, c.interpolated, True)]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.rjust(w) for cell, w in zip(line, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def plot(
    run: dict[str, dict[int, float]],
    reference: dict[str, dict[int, float]],
    out: Path,
    title: str,
    metrics: Sequence[str] = COMPARED,
) -> Path:
    """Each of ``metrics`` (loss, eval loss, WER; CER first where it is primary) against step for the run and the
    reference, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.5))
    for ax, key in zip(axes, metrics):
        ref = reference.get(key, {})
        if ref:
            steps = sorted(ref)
            ax.plot(steps, [ref[s] for s in steps], "o--", color="tab:gray", label=f"reference ({REFERENCE_MODEL})")
        series = run.get(key, {})
        if series:
            steps = sorted(series)
            style = "-" if len(steps) > 1 else "o"
            ax.plot(steps, [series[s] for s in steps], style, color="tab:blue", label="this run", markersize=4)
        ax.set_title(LABELS[key])
        ax.set_xlabel("optimizer step")
        if key == "loss":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def resolve_run(client: Any, experiment_name: str, spec: str) -> Any:
    """A run by id, by name (newest of that name) or 'latest' (newest non-reference run of the experiment)."""
    from mlflow.exceptions import MlflowException

    if re.fullmatch(r"[0-9a-f]{32}", spec):
        try:
            return client.get_run(spec)
        except MlflowException:
            pass
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        raise CompareError(f"no MLflow experiment named {experiment_name!r} (set --experiment_name)")
    if spec == "latest":
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=200)
        runs = [r for r in runs if r.data.tags.get(REFERENCE_TAG) != "true"]
        if not runs:
            raise CompareError(f"experiment {experiment_name!r} has no training run yet")
        return runs[0]
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"attributes.run_name = {_quote(spec)}",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    if not runs:
        raise CompareError(f"no run with id or name {spec!r} in experiment {experiment_name!r}")
    return runs[0]


def metric_series(client: Any, run_id: str, keys: Sequence[str]) -> dict[str, dict[int, float]]:
    """Metric -> {step: value}; a step logged twice (a resumed run) keeps the newer value."""
    out: dict[str, dict[int, float]] = {}
    for key in keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        if history:
            out[key] = {m.step: float(m.value) for m in history}
    return out


def default_out(run: Any) -> Path:
    output_dir = run.data.tags.get("xlsr_dist.output_dir", "")
    if output_dir and Path(output_dir).is_dir():
        return Path(output_dir) / "compare_reference.png"
    return Path.cwd() / f"compare_{run.info.run_id[:8]}.png"


def compare(
    client: Any, experiment_name: str, spec: str, out: Path | None, log_artifact: bool = True
) -> tuple[Any, list[Row], Path]:
    """Resolve the run, build the rows, write the plot (and log it to the run); returns (run, rows, png)."""
    run = resolve_run(client, experiment_name, spec)
    metrics = compared_metrics(run_primary_metric(run))
    series = metric_series(client, run.info.run_id, (*metrics, "epoch"))
    reference = reference_series()
    rows = compare_rows(series, reference, dict(run.data.params), metrics)
    name = run.info.run_name or run.info.run_id
    png = plot(series, reference, out or default_out(run), f"{name} vs reference {REFERENCE_MODEL}", metrics)
    if log_artifact:
        upload_artifact(client, run.info.run_id, png, ARTIFACT_DIR)
    return run, rows, png


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m xlsr_dist.compare",
        description="Compare a training run with the reference model card's results.",
    )
    parser.add_argument("run", nargs="?", default="latest", help="run id, run name, or 'latest' (default)")
    parser.add_argument("--tracking_uri", default="", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--experiment_name", default="", help="default: $MLFLOW_EXPERIMENT_NAME, else xlsr_dist")
    parser.add_argument("--out", default="", help="PNG path (default: <run output_dir>/compare_reference.png)")
    parser.add_argument("--no_log", action="store_true", help="do not log the plot as an artifact of the run")
    args = parser.parse_args(argv)
    cfg = TrackingConfig(tracking_uri=args.tracking_uri, experiment_name=args.experiment_name)
    uri, experiment = resolve_tracking_uri(cfg), resolve_experiment(cfg)
    from mlflow.exceptions import MlflowException

    try:
        client = open_client(uri, max_retries=2, timeout_s=30)
        run, rows, png = compare(
            client, experiment, args.run, Path(args.out) if args.out else None, log_artifact=not args.no_log
        )
    except (CompareError, MlflowException) as exc:
        print(f"xlsr_dist.compare: {str(exc).splitlines()[0]} (MLflow at {redact_text(uri)})", file=sys.stderr)
        sys.exit(1)
    params = run.data.params
    print(f"run {run.info.run_name} ({run.info.run_id}, {run.info.status}) vs reference {REFERENCE_MODEL}")
    if params.get("global_batch_size"):
        print(
            f"global batch: run {params['global_batch_size']} "
            f"({params.get('world_size', '?')} rank(s) x {params.get('micro_batch', '?')} micro x "
            f"{params.get('grad_accum', '?')} accumulation), reference 8"
        )
    if rows:
        print(format_table(rows))
        language = params.get("language", "en")
        if not writes_words(language):
            print(
                f"eval_wer: not meaningful for --language {language}, written without spaces between words; "
                f"this run's primary metric is {run_primary_metric(run)}"
            )
        if any(c.interpolated for r in rows for c in r.cells.values()):
            print("~ reference interpolated linearly between the model card's steps (it evaluated every 500)")
    else:
        print("(the run has neither reached a reference step (500, 1000, ...) nor evaluated yet)")
    print(f"plot: {png}" + ("" if args.no_log else f" (logged to the run under {ARTIFACT_DIR}/)"))


if __name__ == "__main__":
    main()
