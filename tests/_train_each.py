"""`torchrun --nproc_per_node N -m tests._train_each RUNS.json`: xlsr_dist.train.main once per run in RUNS.json, one
after another in the same rank processes. RUNS.json: {"ports": [one free port per run], "runs": [argument lists]}.

Each call is a whole training run (its own process group, started and shut down by main); only the interpreter,
its imports and the launcher are shared, which is most of what a small run costs on a CPU. Each run meets at its
own port with rank 0 hosting the rendezvous: a process group made again on the launcher's store would find the
previous group's addresses under the same keys and connect to ports long closed. Prints ``run I exit CODE`` per
run and exits with the largest code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from xlsr_dist import train


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    worst = 0
    for i, (port, argv) in enumerate(zip(spec["ports"], spec["runs"], strict=True)):
        os.environ["MASTER_PORT"] = str(port)
        try:
            train.main(argv)
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        print(f"run {i} exit {code}", flush=True)
        worst = max(worst, code)
    return worst


if __name__ == "__main__":
    sys.exit(main())
