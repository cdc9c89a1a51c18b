"""Evaluation: WER/CER and loss from error counts summed across ranks, and the test-set evaluation command's parts.

counts.py is the in-training evaluation (greedy decode, global counts); scoring.py scores each utterance of a test
set; hypotheses.py writes and merges the per-rank hypothesis files; error_report.py summarises the errors;
tracking.py logs a test set's metrics to MLflow; run.py is what `python -m xlsr_dist.evaluate` runs once the command
(xlsr_dist/evaluate.py) has parsed its flags. May import the basics, tracking/, data/, decoding/, model.py and
forward.py; never training/ (tests/test_layout.py).
"""
