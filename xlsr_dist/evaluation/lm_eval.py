"""`evaluate --lm DIR [--tune_lm DEV_SHARDS]`: LM beam search beside greedy decoding, and its weights tuned on a
dev set with the grid split across ranks (decoding/tune.py); the chosen values are stored with the LM.

Every rank runs the model over the whole dev set in the same batches (what the grid split needs: each rank decodes
its grid points over all of it), so the dev set should be small; the test sets are split across ranks as ever.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xlsr_dist import atomic, text
from xlsr_dist.data import language, partition, stream
from xlsr_dist.data.catalog import Catalog
from xlsr_dist.decoding import beam, lm_build, tune
from xlsr_dist.decoding.greedy import ctc_greedy_decode
from xlsr_dist.evaluation.counts import ErrorCounts, error_counts
from xlsr_dist.forward import forward
from xlsr_dist.world import World

log = logging.getLogger("xlsr_dist.evaluate")


@dataclass(frozen=True)
class LMArgs:
    lm: str = ""
    tune_lm: str = ""
    beam_width: int = beam.DEFAULT_BEAM_WIDTH
    alphas: tuple[float, ...] = tune.DEFAULT_ALPHAS
    betas: tuple[float, ...] = tune.DEFAULT_BETAS


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lm", default="", help="an LM directory (python -m xlsr_dist.lm build): also decode with it")
    p.add_argument("--tune_lm", default="", metavar="DEV_SHARDS", help="choose the LM's alpha/beta on this dev set")
    p.add_argument("--beam_width", type=int, default=beam.DEFAULT_BEAM_WIDTH, help="LM beam width (default 100)")
    p.add_argument("--lm_alphas", type=float, nargs="+", default=list(tune.DEFAULT_ALPHAS), help="--tune_lm's alphas")
    p.add_argument("--lm_betas", type=float, nargs="+", default=list(tune.DEFAULT_BETAS), help="--tune_lm's betas")


def from_namespace(a: argparse.Namespace) -> tuple[LMArgs, list[str]]:
    problems = []
    if a.beam_width < 1:
        problems.append(f"--beam_width must be at least 1 (got {a.beam_width})")
    if a.tune_lm and not a.lm:
        problems.append("--tune_lm needs --lm DIR: the LM whose weights to choose")
    if any(x < 0 for x in [*a.lm_alphas, *a.lm_betas]) and a.tune_lm:
        problems.append("--lm_alphas / --lm_betas: weights are 0 or more")
    return LMArgs(a.lm, a.tune_lm, a.beam_width, tuple(a.lm_alphas), tuple(a.lm_betas)), problems


def check(args: LMArgs, vocab: dict[str, int]) -> list[str]:
    """What is wrong with --lm for this model (missing, not an LM, another alphabet)."""
    if not args.lm:
        return []
    try:
        lm = lm_build.read_lm_dir(args.lm)
    except lm_build.LMError as exc:
        return [str(exc)]
    problem = lm_build.alphabet_problem(lm, vocab)
    return [problem] if problem else []


def load(args: LMArgs, vocab: dict[str, int]) -> beam.BeamDecoder:
    return beam.load_beam_decoder(args.lm, text.inverse(vocab), args.beam_width)


@torch.no_grad()
def log_probs_of(
    model: torch.nn.Module, catalog: Catalog, device: torch.device, batch_size: int, precision_mode: str
) -> list[tuple[str, np.ndarray]]:
    """(id, (frames, vocab) float32 log-probabilities) of every utterance, in one fixed order on every rank."""
    model.eval()
    batches = partition.eval_rank_batches(catalog.durations, 1, 0, batch_size)
    loader = stream.make_loader(stream.UtteranceDataset(catalog), [b.tolist() for b in batches], 0)
    out = []
    for batch in loader:
        result = forward(model, batch, device, autocast_mode=precision_mode)
        log_probs = result.logits.float().log_softmax(-1).cpu().numpy()
        frames = result.frames.cpu().tolist()
        for i in batch["valid"].nonzero().flatten().tolist():
            out.append((batch["ids"][i], log_probs[i, : int(frames[i])]))
    return sorted(out, key=lambda item: item[0])


def tune_on_dev(
    decoder: beam.BeamDecoder,
    dev: list[tuple[str, np.ndarray]],
    references: dict[str, str],
    args: LMArgs,
    world: World,
    by_words: bool,
) -> tuple[tune.GridPoint, list[tune.GridPoint]]:
    """Collective: the grid decoded across ranks; every rank returns the same choice (and keeps it in decoder)."""
    refs = [references[uid] for uid, _ in dev]

    def count(hypotheses: Sequence[str]) -> tuple[int, int, int, int]:
        c = error_counts(refs, list(hypotheses))
        return c.word_errors, c.words, c.char_errors, c.chars

    return tune.tune(
        decoder, [lp for _, lp in dev], count, args.alphas, args.betas, world.rank, world.world_size, by_words
    )


def store(
    lm_dir: str | Path,
    best: tune.GridPoint,
    points: Sequence[tune.GridPoint],
    greedy: ErrorCounts,
    dev: str,
    world_size: int,
    beam_width: int,
) -> None:
    """Rank 0: the chosen alpha/beta into attrs.json (what pyctcdecode and load_beam_decoder read) and the whole
    grid into the LM's record."""
    lm = lm_build.read_lm_dir(lm_dir)
    info = dict(lm.info)
    info["tuned"] = {
        "alpha": best.alpha,
        "beta": best.beta,
        "wer": best.wer,
        "cer": best.cer,
        "greedy_wer": greedy.word_errors / max(greedy.words, 1),
        "greedy_cer": greedy.char_errors / max(greedy.chars, 1),
        "dev": dev,
        "world_size": world_size,
        "beam_width": beam_width,
        "grid": [p.to_dict() for p in points],
    }
    atomic.write_json(lm.path / lm_build.INFO_FILE, info)
    lm_build.write_attrs(lm.path, best.alpha, best.beta)


def decoder_for(
    args: LMArgs,
    model: torch.nn.Module,
    vocab: dict[str, int],
    dev: tuple[Catalog, dict[str, str]] | None,
    world: World,
    device: torch.device,
    batch_size: int,
    precision_mode: str,
) -> Callable[[np.ndarray], str] | None:
    """Collective with --tune_lm. The LM beam decoder of --lm (None without), its weights first chosen on the dev
    set (its catalog and references) and stored with the LM by rank 0."""
    if not args.lm:
        return None
    decoder = load(args, vocab)
    inverse, blank = text.inverse(vocab), vocab[text.PAD]
    if dev is not None:
        log_probs = log_probs_of(model, dev[0], device, batch_size, precision_mode)
        by_words = text.writes_words((language.split_normalization(args.tune_lm) or text.ENGLISH).language)
        best, points = tune_on_dev(decoder, log_probs, dev[1], args, world, by_words)
        if world.is_main:
            greedy_hyps = [ctc_greedy_decode(lp.argmax(-1).tolist(), inverse, blank) for _, lp in log_probs]
            greedy = error_counts([dev[1][uid] for uid, _ in log_probs], greedy_hyps)
            store(args.lm, best, points, greedy, args.tune_lm, world.world_size, args.beam_width)
            log.info(
                "--tune_lm: alpha %g, beta %g (dev WER %.4f, CER %.4f; %d grid points on %d rank(s)), stored in %s",
                best.alpha,
                best.beta,
                best.wer,
                best.cer,
                len(points),
                world.world_size,
                args.lm,
            )
    return decoder.decode_text
