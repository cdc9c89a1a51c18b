"""Text: transcript normalisation per language (normalization.py) and the CTC head's character vocabulary
(vocabulary.py). Imports only the basics (atomic); every room may import it. The public names are re-exported here,
so callers write ``from xlsr_dist import text`` and ``text.normalize(...)``."""

from xlsr_dist.text.normalization import (
    DOTLESS_I,
    ENGLISH,
    MODES,
    NO_WORD_SPACES,
    PAD,
    UNK,
    WORD_DELIMITER,
    TextNormalization,
    characters_per_second_limit,
    normalize,
    number_words,
    settings_problems,
    writes_words,
)
from xlsr_dist.text.vocabulary import build_vocab, ctc_min_frames, encode, inverse, load_vocab, save_vocab

__all__ = [
    "DOTLESS_I",
    "ENGLISH",
    "MODES",
    "NO_WORD_SPACES",
    "PAD",
    "UNK",
    "WORD_DELIMITER",
    "TextNormalization",
    "build_vocab",
    "characters_per_second_limit",
    "ctc_min_frames",
    "encode",
    "inverse",
    "load_vocab",
    "normalize",
    "number_words",
    "save_vocab",
    "settings_problems",
    "writes_words",
]
