"""The flags' documentation, read from the config tree's source: each field's docstring (the string literal under
it, as litgpt's args.py writes them) is its ``--help`` text and its row in docs/flags.md.

``python -m xlsr_dist.config --write-docs`` writes docs/flags.md; tests/test_config_docs.py fails when the file and
the code differ.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Any

from xlsr_dist import atomic
from xlsr_dist.config import tree
from xlsr_dist.config.validate import REPO_ROOT

FLAGS_DOC = REPO_ROOT / "docs" / "flags.md"
COMMAND = "python -m xlsr_dist.config --write-docs"


@functools.cache
def field_docs() -> dict[str, str]:
    """Flag name -> its docstring as one paragraph, for every field of every section of the tree."""
    module = ast.parse(inspect.getsource(tree))
    sections = {cls.__name__ for cls in tree.section_classes().values()}
    docs: dict[str, str] = {}
    for node in module.body:
        if not (isinstance(node, ast.ClassDef) and node.name in sections):
            continue
        for statement, following in zip(node.body, node.body[1:]):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def section_doc(section: str) -> str:
    return " ".join((tree.section_classes()[section].__doc__ or "").split())


def show_default(value: Any) -> str:
    """A default as a user would type it: true/false, none for unset, '' for an empty string."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return "''"
    return str(value)


def flag_help(name: str, default: Any) -> str:
    """The ``--help`` text of one flag (argparse formats help with %, hence the escape)."""
    text = f"{field_docs()[name]} (default: {show_default(default)}; YAML key: {name})"
    return text.replace("%", "%%")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """docs/flags.md: one table per section, in the order of the tree."""
    defaults = tree.Config().flat()
    lines = [
        "# Training flags",
        "",
        f"Generated from the field docstrings in `xlsr_dist/config/tree.py` by `{COMMAND}`: edit those, not this "
        "file (tests/test_config_docs.py fails when the two differ). `python -m xlsr_dist.train --help` prints the "
        "same text.",
        "",
        "Every flag may also be set in a YAML or JSON file given with `--config FILE`, keyed by its name "
        "(`learning_rate: 2.0e-4`) or inside its section (`train: {learning_rate: 2.0e-4}`); flags given on the "
        "command line win over the file. Unknown keys are errors, and every problem is reported at once, each naming "
        "the flag to change.",
    ]
    for section, cls in tree.section_classes().items():
        lines += ["", f"## {section}", "", section_doc(section), "", "| flag | default | YAML key | what it does |"]
        lines.append("|---|---|---|---|")
        for f in dataclasses.fields(cls):
            default = f"`{show_default(defaults[f.name])}`"
            lines.append(f"| `--{f.name}` | {_cell(default)} | `{f.name}` | {_cell(field_docs()[f.name])} |")
    return "\n".join(lines) + "\n"


def write_docs(path: Path = FLAGS_DOC) -> Path:
    atomic.write_text(path, markdown())
    return path
