"""xlsr_dist: multi-GPU CTC fine-tuning of wav2vec2 XLS-R with DeepSpeed ZeRO-2, sharded streaming data and MLflow."""

__version__ = "0.1.0"
