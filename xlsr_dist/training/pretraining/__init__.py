"""wav2vec 2.0 self-supervised pretraining beside CTC fine-tuning: the objective (transformers'
Wav2Vec2ForPreTraining loss with masks, negatives and Gumbel noise drawn from (seed, step, utterance id)), the
unlabelled data stream, the model to continue or start, and the run (the same DeepSpeed engine as training)."""
