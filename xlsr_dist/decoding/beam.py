"""CTC beam search with an n-gram word LM (shallow fusion), through pyctcdecode 0.5.0 and KenLM.

Why pyctcdecode, and not flashlight-text's KenLM decoder: docs/decoding.md. Its score of a beam is the CTC log
probability plus ``alpha`` times the LM's log probability (natural log) of the words so far plus ``beta`` per word;
partial words not starting any word in ``unigrams.txt`` get ``unk_score_offset``.

``BeamDecoder`` implements the ``Decoder`` protocol (xlsr_dist/decoding/words.py: ``decode(
log_probs) -> list[Word]``, end frame exclusive; pyctcdecode's word frames are that already).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlsr_dist.decoding import lm_build
from xlsr_dist.decoding.words import Word

DEFAULT_BEAM_WIDTH = 100


def _quiet_pyctcdecode() -> None:
    # pyctcdecode logs its alphabet guesses at INFO and warns about our "[UNK]" / unigram coverage at every build.
    for name in ("pyctcdecode", "pyctcdecode.alphabet", "pyctcdecode.decoder", "pyctcdecode.language_model"):
        logging.getLogger(name).setLevel(logging.ERROR)


def labels_for(inverse_vocab: Sequence[str]) -> list[str]:
    """The model's tokens in id order, as pyctcdecode's Alphabet takes them ("|" -> space, [PAD] -> blank,
    [UNK] -> its unknown token: it recognises the names HF's vocabularies use)."""
    return list(inverse_vocab)


class BeamDecoder:
    """LM beam search over one utterance's (frames, vocab) log-probabilities."""

    def __init__(
        self, decoder: Any, lm_dir: Path, beam_width: int = DEFAULT_BEAM_WIDTH, alpha: float = 0.5, beta: float = 1.5
    ) -> None:
        self._decoder = decoder
        self.lm_dir = lm_dir
        self.beam_width = beam_width
        self.alpha = alpha
        self.beta = beta

    def reset_params(self, alpha: float, beta: float) -> None:
        """Other LM weights without reloading the LM (the tuning grid)."""
        self._decoder.reset_params(alpha=alpha, beta=beta)
        self.alpha, self.beta = alpha, beta

    def decode(self, log_probs: np.ndarray) -> list[Word]:
        beams = self._decoder.decode_beams(np.asarray(log_probs, dtype=np.float32), beam_width=self.beam_width)
        _, _, word_frames, _, _ = beams[0]
        return [Word(w, int(start), int(end)) for w, (start, end) in word_frames]

    def decode_text(self, log_probs: np.ndarray) -> str:
        return " ".join(w.text for w in self.decode(log_probs))


def load_beam_decoder(
    lm_dir: str | Path,
    inverse_vocab: Sequence[str],
    beam_width: int = DEFAULT_BEAM_WIDTH,
    alpha: float | None = None,
    beta: float | None = None,
) -> BeamDecoder:
    """A beam decoder for a model whose CTC outputs are ``inverse_vocab`` (id -> token) with the LM at ``lm_dir``
    (``lm build``'s directory, or an export's language_model/). alpha/beta default to the values stored with the LM
    (tuned by ``evaluate --tune_lm``, else pyctcdecode's defaults). Raises lm_build.LMError for a missing LM or
    one whose characters the vocabulary lacks."""
    from pyctcdecode import Alphabet, BeamSearchDecoderCTC, LanguageModel

    _quiet_pyctcdecode()
    lm = lm_build.read_lm_dir(lm_dir)
    problem = lm_build.alphabet_problem(lm, {t: i for i, t in enumerate(inverse_vocab)})
    if problem:
        raise lm_build.LMError(problem)
    language_model = LanguageModel.load_from_dir(str(lm.path))
    # pyctcdecode refuses an int alpha/beta (isinstance float checks).
    a = float(lm.alpha if alpha is None else alpha)
    b = float(lm.beta if beta is None else beta)
    language_model.reset_params(alpha=a, beta=b)
    decoder = BeamSearchDecoderCTC(Alphabet.build_alphabet(labels_for(inverse_vocab)), language_model)
    return BeamDecoder(decoder, lm.path, beam_width, a, b)
