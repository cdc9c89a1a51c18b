"""Audio files to text with a trained model: greedy CTC decoding, one `FILE<TAB>TEXT` line per file.

`python -m xlsr_dist.transcribe --model PATH FILE [FILE ...]`
PATH is an exported model directory, a run's --output_dir (final/, else its newest complete checkpoint) or one
checkpoint directory. Any format and sample rate soundfile reads, mono or stereo (averaged).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def load(model_path: str | Path, device: str = "") -> tuple[Any, Any, Any]:
    """(model in eval mode on ``device``, processor, torch.device)."""
    import torch

    from xlsr_dist.training.checkpoint import load_hf_model

    model, processor = load_hf_model(model_path)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.to(dev).eval(), processor, dev


def transcribe_one(model: Any, processor: Any, device: Any, wave: Any) -> str:
    """Greedy CTC decode of one float32 mono 16 kHz waveform."""
    import torch

    # One file per forward: no padding, so the result is the same whatever else is being transcribed.
    inputs = processor(wave, sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        logits = model(inputs.input_values.to(device)).logits
    ids = logits.argmax(dim=-1).cpu()
    return str(processor.batch_decode(ids)[0])


def transcribe(model_path: str | Path, files: Sequence[str | Path], device: str = "") -> Iterator[tuple[str, str]]:
    """(file, text) for each file, in order; raises AudioError naming a file that cannot be read."""
    from xlsr_dist.audio import load_audio

    model, processor, dev = load(model_path, device)
    for f in files:
        yield str(f), transcribe_one(model, processor, dev, load_audio(f))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m xlsr_dist.transcribe", description="Transcribe audio files with a trained or exported model."
    )
    parser.add_argument("--model", required=True, help="exported model dir, run --output_dir, or checkpoint dir")
    parser.add_argument("--device", default="", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args(argv)
    from xlsr_dist.audio import AudioError
    from xlsr_dist.training.checkpoint import CheckpointError

    failed = 0
    try:
        model, processor, dev = load(args.model, args.device)
    except (CheckpointError, OSError) as exc:
        print(f"xlsr_dist.transcribe: --model {args.model}: {exc}", file=sys.stderr)
        sys.exit(2)
    from xlsr_dist.audio import load_audio

    for f in args.files:
        try:
            text = transcribe_one(model, processor, dev, load_audio(f))
        except AudioError as exc:
            # One unreadable file should not cost the transcripts of the others.
            print(f"xlsr_dist.transcribe: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{f}\t{text}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
