"""ConfigError: how every user error found before a process group travels to the one message that reports it."""

from __future__ import annotations

from collections.abc import Sequence


class ConfigError(ValueError):
    """Raised before any process group starts; ``problems`` holds one line per problem, each naming a flag.

    ``scope`` says which ranks can see the problem, hence which report it (one message, not one per rank): "run"
    (the flags and files every rank reads alike: rank 0 reports), "node" (this machine's GPUs, files or caches: the
    first rank of each node reports, since another node may differ), "rank" (this rank's own environment, e.g. its
    LOCAL_RANK: the rank itself reports).

    ``config``: when raised while building a Config, the Config of the values that did parse (the others at their
    defaults), so a caller can look for more problems (the data locations) and report them all together; None
    otherwise."""

    def __init__(self, problems: Sequence[str], scope: str = "run", config: object | None = None) -> None:
        self.problems = list(problems)
        self.scope = scope
        self.config = config
        lines = "\n".join("  - " + p.replace("\n", "\n    ") for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the configuration:\n{lines}")
