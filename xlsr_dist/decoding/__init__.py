"""Decoding: CTC outputs to text. greedy.py (argmax, repeats collapsed, blanks dropped) serves training's evaluation,
`evaluate` and `transcribe`. Decoders for files share one protocol, `words.Decoder`, which turns a file's (frames,
vocab) log-softmax into `words.Word`s carrying their CTC frame spans, so any decoder (words.GreedyDecoder, beam.py's
LM beam search through pyctcdecode) gives text, word timestamps and subtitles alike. `chunking` cuts long audio into
overlapping windows and stitches their logits back into the file's; `subtitles` turns timed words into SRT/WebVTT
cues; lm_build.py / lm_export.py build KenLM n-gram LMs and ship them in an export; tune.py chooses the LM weight and
word bonus on a dev set (docs/decoding.md). Reading audio and running the model are `xlsr_dist.transcribe`'s and
evaluation's. May import the basics and text/; never data/, training/ or evaluation/."""
