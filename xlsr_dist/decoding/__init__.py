"""Decoding: CTC outputs to text. greedy.py (argmax, repeats collapsed, blanks dropped) serves training's evaluation,
`evaluate` and `transcribe`. May import the basics and text/; never data/, training/ or evaluation/."""
