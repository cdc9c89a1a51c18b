"""Training: the Trainer and what it is built from.

The Trainer (trainer.py) runs the loop, set up in the phases of setup.py, with the helpers of loop.py (log
window, evaluator, checkpointer, non-finite guard) and one TrainState (state.py: what a checkpoint carries besides
DeepSpeed's files, saved and restored in one place); engine.py resolves the DeepSpeed config and initialises the engine;
checkpoint.py saves every rank's state together and marks it complete, elastic.py resumes it on another world size,
best_checkpoint.py keeps the best one; layerdrop.py draws the layers a step skips from the seed so every rank and
every world size skips the same (SpecAugment's masks are drawn where batches are built: data/specaugment.py);
preflight.py checks what a run needs before any process group.
May import the basics (config, world, atomic, model, precision, ctc ...), text/, data/, decoding/, evaluation/ and
tracking/; nothing outside the commands imports training/.
"""
