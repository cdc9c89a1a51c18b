"""`python -m xlsr_dist.config --write-docs`: write docs/flags.md from the config tree's field docstrings."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from xlsr_dist.config import docs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xlsr_dist.config", description=__doc__)
    parser.add_argument("--write-docs", action="store_true", help=f"write {docs.FLAGS_DOC.name} (docs/)")
    args = parser.parse_args(argv)
    if not args.write_docs:
        parser.print_help(sys.stderr)
        sys.exit(2)
    print(f"wrote {docs.write_docs()}")


if __name__ == "__main__":
    main()
