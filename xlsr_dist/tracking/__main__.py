"""`python -m xlsr_dist.tracking replay --output_dir DIR`: see xlsr_dist.tracking.replay."""

import sys

from xlsr_dist.tracking.replay import main

main(sys.argv[1:])
