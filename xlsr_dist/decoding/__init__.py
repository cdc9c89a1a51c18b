"""Decoding: CTC outputs to text. greedy.py (argmax, repeats collapsed, blanks dropped) serves training's evaluation,
`evaluate` and `transcribe`; beam.py (LM beam search through pyctcdecode), lm_build.py / lm_export.py (KenLM n-gram
LMs: building, shipping in an export) and tune.py (alpha/beta on a dev set) serve `--lm` (docs/decoding.md).
May import the basics and text/; never data/, training/ or evaluation/."""
