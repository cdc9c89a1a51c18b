"""`python -m xlsr_dist.prepare`: corpus layouts -> Parquet shards + manifest + report (see xlsr_dist.data.prepare)."""

from xlsr_dist.data.prepare import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
