"""Audio files to text with a trained model: CTC decoding, one `FILE<TAB>TEXT` line per file (or JSON lines, SRT,
WebVTT subtitles with word timestamps).

`python -m xlsr_dist.transcribe --model PATH [--format tsv|jsonl|srt|vtt] [--timestamps word] [--chunk_s 20]
[--stride_s 3] [--batch_size N] [--output_dir DIR] FILE [FILE ...]`
PATH is an exported model directory, a run's --output_dir (final/, else its newest complete checkpoint) or one
checkpoint directory. Any format and sample rate soundfile reads, mono or stereo (averaged). A file longer than
--chunk_s is read in blocks and run in overlapping windows (xlsr_dist/decoding/chunking.py), so memory is bounded
by the window, not the file; files no longer than that are run whole, --batch_size at a time, shortest first, padded
under the attention mask (only for models whose feature extractor returns one), and printed in the input order.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_dist.audio import SAMPLE_RATE, AudioError, audio_seconds, load_audio, stream_audio
from xlsr_dist.decoding import subtitles
from xlsr_dist.decoding.chunking import ChunkPlan, FrameGeometry, Window, next_window
from xlsr_dist.decoding.words import Decoder, GreedyDecoder, Word, text_of, timed

PROG = "xlsr_dist.transcribe"
FORMATS = ("tsv", "jsonl", "srt", "vtt")
CHUNK_S = 20.0
STRIDE_S = 3.0


def load(model_path: str | Path, device: str = "") -> tuple[Any, Any, Any]:
    """(model in eval mode on ``device``, processor, torch.device)."""
    import torch

    from xlsr_dist.model import load_hf_model

    model, processor = load_hf_model(model_path)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.to(dev).eval(), processor, dev


def inverse_vocab(processor: Any, vocab_size: int) -> list[str]:
    """CTC output id -> token, from the processor's tokenizer."""
    inverse = [""] * vocab_size
    for token, i in processor.tokenizer.get_vocab().items():
        if 0 <= i < vocab_size:
            inverse[i] = token
    return inverse


def greedy_decoder(processor: Any, vocab_size: int) -> GreedyDecoder:
    """The greedy decoder over the processor's vocabulary (blank = its pad token, as in training)."""
    tokenizer = processor.tokenizer
    return GreedyDecoder(inverse_vocab(processor, vocab_size), tokenizer.pad_token_id, tokenizer.word_delimiter_token)


def decode_file(decoder: Decoder, log_probs: np.ndarray) -> list[Word]:
    """A file's words from its (frames, vocab) float32 log-softmax: the one place any decoder is applied."""
    return decoder.decode(np.ascontiguousarray(log_probs, dtype=np.float32))


@dataclass(frozen=True)
class Result:
    file: str
    words: list[Word] | None = None
    error: AudioError | None = None

    @property
    def text(self) -> str:
        return text_of(self.words or [])


class Transcriber:
    """A loaded model and a decoder; files in, words (with CTC frame spans) out."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        device: Any,
        decoder: Decoder | None = None,
        chunk_s: float = CHUNK_S,
        stride_s: float = STRIDE_S,
        batch_size: int = 1,
    ) -> None:
        self.model, self.processor, self.device = model, processor, device
        self.decoder = decoder or greedy_decoder(processor, model.config.vocab_size)
        self.geometry = FrameGeometry.from_config(model.config)
        self.frame_seconds = self.geometry.seconds_per_frame(SAMPLE_RATE)
        # chunk_s 0: every file in one window, however long (memory grows with the file).
        self.plan = (
            ChunkPlan.of(self.geometry, int(chunk_s * SAMPLE_RATE), int(stride_s * SAMPLE_RATE)) if chunk_s else None
        )
        # Padding changes the output of a model that takes no attention mask (group-normalised feature encoders
        # normalise over the padded length): such models run one input at a time.
        self.takes_mask = bool(getattr(processor.feature_extractor, "return_attention_mask", False))
        self.batch_size = batch_size if self.takes_mask else 1

    def log_probs(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One (frames, vocab) float32 log-softmax per waveform, ``waves`` in one forward pass when batching."""
        import torch

        from xlsr_dist.forward import forward

        if len(waves) > 1 and not self.takes_mask:
            return [lp for w in waves for lp in self.log_probs([w])]
        # The feature extractor normalises each input over its own length (attention mask), padding excluded.
        inputs = self.processor(
            list(waves), sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True, return_attention_mask=True
        )
        with torch.inference_mode():
            out = forward(
                self.model, {"input_values": inputs.input_values, "attention_mask": inputs.attention_mask}, self.device
            )
            log_probs = torch.log_softmax(out.logits.float(), dim=-1).cpu().numpy()
        return [log_probs[i, :n].copy() for i, n in enumerate(out.frames.cpu().tolist())]

    def words(self, log_probs: np.ndarray) -> list[Word]:
        return decode_file(self.decoder, log_probs)

    def file_log_probs(self, path: str | Path) -> np.ndarray:
        """The file's log-probabilities, read block by block and run window by window (``batch_size`` windows per
        forward); raises AudioError for a file that cannot be read."""
        if self.plan is None:
            return self.log_probs([load_audio(path)])[0]
        pieces: list[np.ndarray] = []
        queue: list[tuple[Window, np.ndarray]] = []

        def run(force: bool) -> None:
            if queue and (force or len(queue) >= self.batch_size):
                outs = self.log_probs([wave for _, wave in queue])
                pieces.extend(lp[w.keep_from : w.keep_to] for (w, _), lp in zip(queue, outs))
                queue.clear()

        for window, wave in _cut(self.plan, stream_audio(path)):
            queue.append((window, wave))
            run(force=False)
        run(force=True)
        vocab = int(self.model.config.vocab_size)
        return np.concatenate(pieces, axis=0) if pieces else np.zeros((0, vocab), dtype=np.float32)

    def results(self, files: Sequence[str | Path]) -> Iterator[Result]:
        """One Result per file, in the input order. Files that fit one window are run ``batch_size`` at a time,
        shortest first; longer ones one after another, streamed."""
        short = self._short_files(files) if self.batch_size > 1 else {}
        batches = iter(_by_duration(short, self.batch_size))
        done: dict[int, Result] = {}
        for i, f in enumerate(files):
            if i not in short:
                yield self._one(f)
                continue
            while i not in done:
                done.update(self._batch(files, next(batches)))
            yield done.pop(i)

    def _one(self, f: str | Path) -> Result:
        try:
            return Result(str(f), words=self.words(self.file_log_probs(f)))
        except AudioError as exc:
            return Result(str(f), error=exc)

    def _short_files(self, files: Sequence[str | Path]) -> dict[int, float]:
        # Two samples short of a window: resampling may round the 16 kHz length up by one, and a file the one-file
        # path would cut in two must not run whole here.
        limit = ((self.plan.span - 2) if self.plan else float("inf")) / SAMPLE_RATE
        short: dict[int, float] = {}
        for i, f in enumerate(files):
            try:
                seconds = audio_seconds(f)
            except AudioError:
                continue  # told when its turn comes, by the one-file path
            if seconds <= limit:
                short[i] = seconds
        return short

    def _batch(self, files: Sequence[str | Path], indices: list[int]) -> dict[int, Result]:
        out: dict[int, Result] = {}
        waves: dict[int, np.ndarray] = {}
        for i in indices:
            try:
                # The streaming reader, as for a file run alone: the same samples whatever the batch.
                waves[i] = np.concatenate(list(stream_audio(files[i])))
            except AudioError as exc:
                out[i] = Result(str(files[i]), error=exc)
        if waves:
            for i, lp in zip(waves, self.log_probs(list(waves.values()))):
                out[i] = Result(str(files[i]), words=self.words(lp))
        return out


def _by_duration(durations: dict[int, float], batch_size: int) -> list[list[int]]:
    """Indices sorted by duration (ties in input order), cut into batches: padding stays small."""
    ordered = sorted(durations, key=lambda i: (durations[i], i))
    return [ordered[k : k + batch_size] for k in range(0, len(ordered), batch_size)]


def _cut(plan: ChunkPlan, blocks: Iterator[np.ndarray]) -> Iterator[tuple[Window, np.ndarray]]:
    """(window, its samples) as the blocks arrive, holding only the audio from the next window's start on."""
    buf = np.zeros(0, dtype=np.float32)
    buf_start = 0  # the file's sample index of buf[0]
    first_kept = 0
    final = False
    while True:
        window = next_window(plan, first_kept, buf_start + buf.shape[0], final)
        if window is not None:
            yield window, buf[window.start - buf_start : window.end - buf_start].copy()
            if final and window.end >= buf_start + buf.shape[0]:
                return
            first_kept = window.first_frame + window.keep_to
            drop = max(0, first_kept - plan.context_frames) * plan.geometry.hop - buf_start
            buf, buf_start = buf[drop:], buf_start + drop
            continue
        if final:
            return
        block = next(blocks, None)
        if block is None:
            final = True
        else:
            buf = np.concatenate([buf, block])


def transcribe(model_path: str | Path, files: Sequence[str | Path], device: str = "") -> Iterator[tuple[str, str]]:
    """(file, text) for each file, in order; raises AudioError naming a file that cannot be read."""
    model, processor, dev = load(model_path, device)
    for result in Transcriber(model, processor, dev).results(files):
        if result.error is not None:
            raise result.error
        yield result.file, result.text


# ------------------------------------------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}", description="Transcribe audio files with a trained model.")
    p.add_argument("--model", required=True, help="exported model dir, run --output_dir, or checkpoint dir")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--format", default="tsv", choices=FORMATS, help="FILE<TAB>TEXT lines, JSON lines, subtitles")
    p.add_argument("--timestamps", default="none", choices=("none", "word"), help="word start/end in jsonl")
    p.add_argument("--output_dir", default="", help="srt/vtt: one subtitle file per input here (default: stdout)")
    p.add_argument("--chunk_s", type=float, default=CHUNK_S, help="longest window in seconds; 0: whole files")
    p.add_argument("--stride_s", type=float, default=STRIDE_S, help="context on each side of a window, seconds")
    p.add_argument("--batch_size", type=int, default=1, help="files per forward pass, shortest first")
    p.add_argument("--max_cue_words", type=int, default=subtitles.MAX_WORDS, help="srt/vtt: words per cue")
    p.add_argument("--max_cue_s", type=float, default=subtitles.MAX_SECONDS, help="srt/vtt: seconds per cue")
    p.add_argument(
        "--lm",
        default="",
        help="LM beam search with this LM (python -m xlsr_dist.lm build's directory) instead of greedy",
    )
    p.add_argument("--beam_width", type=int, default=100, help="with --lm: beams kept per frame")
    p.add_argument("files", nargs="+", metavar="FILE")
    return p


def _problem(args: argparse.Namespace) -> str:
    """The first user error in the flags, '' when there is none."""
    subtitle = args.format in ("srt", "vtt")
    checks = [
        (args.chunk_s < 0, f"--chunk_s {args.chunk_s:g}: must be >= 0 (0: whole files)"),
        (args.stride_s < 0, f"--stride_s {args.stride_s:g}: must be >= 0"),
        (args.beam_width < 1, f"--beam_width {args.beam_width}: must be at least 1"),
        (
            args.chunk_s > 0 and args.chunk_s <= 2 * args.stride_s,
            f"--stride_s {args.stride_s:g}: a window of --chunk_s {args.chunk_s:g} keeps nothing between two "
            "contexts this long; make --chunk_s more than twice --stride_s",
        ),
        (args.batch_size < 1, f"--batch_size {args.batch_size}: must be >= 1"),
        (args.max_cue_words < 1, f"--max_cue_words {args.max_cue_words}: must be >= 1"),
        (args.max_cue_s <= 0, f"--max_cue_s {args.max_cue_s:g}: must be > 0"),
        (
            args.timestamps == "word" and args.format == "tsv",
            "--timestamps word: tsv has no room for them; use --format jsonl, srt or vtt",
        ),
        (bool(args.output_dir) and not subtitle, f"--output_dir: only for --format srt or vtt, not {args.format}"),
        (
            subtitle and not args.output_dir and len(args.files) > 1,
            f"--format {args.format}: {len(args.files)} files need --output_dir (one subtitle file each)",
        ),
    ]
    problem = next((message for bad, message in checks if bad), "")
    if not problem and subtitle and args.output_dir:
        stems = [Path(f).stem for f in args.files]
        twice = sorted({s for s in stems if stems.count(s) > 1})
        if twice:
            problem = f"--output_dir: several inputs would write {twice[0]}.{args.format}; transcribe them apart"
    return problem


def _writer(args: argparse.Namespace, frame_seconds: float) -> Callable[[Result], None]:
    """What to do with one file's result in the chosen --format."""
    from xlsr_dist import atomic

    def write(result: Result) -> None:
        words = timed(result.words or [], frame_seconds)
        if args.format == "tsv":
            print(f"{result.file}\t{result.text}", flush=True)
        elif args.format == "jsonl":
            record: dict[str, Any] = {"file": result.file, "text": result.text}
            if args.timestamps == "word":
                record["words"] = [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words]
            print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            doc = subtitles.render(args.format, words, args.max_cue_words, args.max_cue_s)
            if args.output_dir:
                target = Path(args.output_dir) / f"{Path(result.file).stem}.{args.format}"
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic.write_text(target, doc)
            else:
                sys.stdout.write(doc)
                sys.stdout.flush()

    return write


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    problem = _problem(args)
    if problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        sys.exit(2)
    from xlsr_dist.decoding.lm_build import LMError
    from xlsr_dist.state_files import CheckpointError

    try:
        model, processor, dev = load(args.model, args.device)
    except (CheckpointError, OSError, ValueError) as exc:
        print(f"{PROG}: --model {args.model}: {exc}", file=sys.stderr)
        sys.exit(2)
    decoder: Decoder | None = None
    if args.lm:
        from xlsr_dist.decoding.beam import load_beam_decoder

        try:
            decoder = load_beam_decoder(args.lm, inverse_vocab(processor, model.config.vocab_size), args.beam_width)
        except LMError as exc:
            print(f"{PROG}: --lm {args.lm}: {exc}", file=sys.stderr)
            sys.exit(2)
    try:
        transcriber = Transcriber(model, processor, dev, decoder, args.chunk_s, args.stride_s, args.batch_size)
    except (OSError, ValueError) as exc:
        print(f"{PROG}: --model {args.model}: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.batch_size > 1 and not transcriber.takes_mask:
        print(
            f"{PROG}: --batch_size {args.batch_size}: this model's feature extractor takes no attention mask, so "
            "padding would change its output; files go one at a time",
            file=sys.stderr,
        )
    write = _writer(args, transcriber.frame_seconds)
    failed = 0
    for result in transcriber.results(args.files):
        if result.error is not None:
            # One unreadable file should not cost the transcripts of the others.
            print(f"{PROG}: {result.error}", file=sys.stderr)
            failed += 1
            continue
        write(result)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
