"""An LM inside an exported model folder, in the layout pyctcdecode's ``BeamSearchDecoderCTC.load_from_dir(folder)``
reads (and Hugging Face's Wav2Vec2ProcessorWithLM before it): ``alphabet.json`` beside the model files and
``language_model/`` (attrs.json, lm.bin, unigrams.txt; our record as a hidden file, which pyctcdecode skips)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from xlsr_dist import atomic
from xlsr_dist.decoding import lm_build
from xlsr_dist.decoding.beam import labels_for

ALPHABET_FILE = "alphabet.json"
LM_SUBDIR = "language_model"


def checked(lm_dir: str | Path, inverse_vocab: Sequence[str]) -> lm_build.LMDir:
    """The LM, if it can decode this model's outputs; raises LMError naming --lm otherwise."""
    lm = lm_build.read_lm_dir(lm_dir)
    problem = lm_build.alphabet_problem(lm, {t: i for i, t in enumerate(inverse_vocab)})
    if problem:
        raise lm_build.LMError(problem)
    return lm


def write_into(lm: lm_build.LMDir, dest: Path, inverse_vocab: Sequence[str]) -> None:
    """alphabet.json and language_model/ into the export folder ``dest`` (language_model/ appears whole)."""
    from pyctcdecode import Alphabet

    target = dest / LM_SUBDIR
    if target.exists():  # an earlier export to the same folder
        shutil.rmtree(target)
    with atomic.replacing_dir(target) as tmp:
        for f in lm.path.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
    atomic.write_text(dest / ALPHABET_FILE, Alphabet.build_alphabet(labels_for(inverse_vocab)).dumps())


def card_lines(lm: lm_build.LMDir) -> list[str]:
    """The model card's section on the LM: what it is, how to decode with it, WER with and without it if tuned."""
    info = lm.info
    sources = ", ".join(str(s) for s in info.get("sources", [])) or "?"
    tuned = info.get("tuned")
    weights = f"alpha {lm.alpha:g}, beta {lm.beta:g}"
    weights += (
        f" (chosen on {tuned['dev']} by `evaluate --tune_lm`)" if tuned else " (pyctcdecode's defaults, not tuned)"
    )
    lines = [
        "",
        "## Decoding with the language model",
        "",
        f"`{LM_SUBDIR}/` holds a {info.get('order', '?')}-gram word LM in KenLM's binary format "
        f"({info.get('words', '?')} words, {info.get('sentences', '?')} sentences from {sources}; "
        f"xlsr_dist.lm build, KenLM {info.get('kenlm', '?')} lmplz), used in CTC beam search "
        f"through pyctcdecode with {weights}:",
        "",
        "```python",
        "from pyctcdecode import BeamSearchDecoderCTC",
        'decoder = BeamSearchDecoderCTC.load_from_dir("<this folder>")',
        "text = decoder.decode(log_probs)  # (frames, vocab) log-softmax of the model's logits",
        "```",
    ]
    if tuned and "greedy_wer" in tuned:
        lines += [
            "",
            f"On {tuned['dev']} (the set the weights were chosen on, so an optimistic figure):",
            "",
            "| decoding | WER | CER |",
            "|:--|:--|:--|",
            f"| greedy | {tuned['greedy_wer']:.4f} | {tuned['greedy_cer']:.4f} |",
            f"| beam {tuned.get('beam_width', '?')} + LM | {tuned['wer']:.4f} | {tuned['cer']:.4f} |",
        ]
    return lines
