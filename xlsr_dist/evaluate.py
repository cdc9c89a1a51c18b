"""`python -m xlsr_dist.evaluate --model MODEL --data SHARDS [SHARDS ...]`: a trained model's WER, CER and loss on
test sets (xlsr_dist.evaluation.run); launched like training (python, torchrun, deepspeed --module)."""

from xlsr_dist.evaluation.run import main

if __name__ == "__main__":
    main()
