"""Flags that explain themselves: each config field's docstring is its --help text and its row in docs/flags.md,
and docs/flags.md is exactly what the code generates."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from tests._dist import ROOT, base_env
from xlsr_dist.config import FLAGS, SECTIONS, Config, argparser, docs
from xlsr_dist.config.tree import section_classes


def _squeezed(text: str) -> str:
    """Without any whitespace: argparse wraps help lines, at hyphens too."""
    return "".join(text.split())


def test_docs_flags_md_is_what_the_code_generates() -> None:
    on_disk = docs.FLAGS_DOC.read_text()
    assert on_disk == docs.markdown(), "docs/flags.md is stale: run `python -m xlsr_dist.config --write-docs`"


def test_every_flag_has_its_own_sentence() -> None:
    documented = docs.field_docs()
    assert sorted(documented) == sorted(FLAGS)
    for name, text in documented.items():
        assert len(text.split()) >= 5 and text.rstrip(")").endswith((".", "'", '"')), (name, text)
    # No two flags share one text: each says what its own flag does.
    assert len(set(documented.values())) == len(documented)


def test_flags_md_has_one_row_per_flag_with_default_and_yaml_key() -> None:
    text = docs.FLAGS_DOC.read_text()
    defaults = Config().flat()
    for name in FLAGS:
        rows = [line for line in text.splitlines() if line.startswith(f"| `--{name}` |")]
        assert len(rows) == 1, name
        cells = rows[0].split(" | ")
        assert cells[1] == f"`{docs.show_default(defaults[name])}`" and cells[2] == f"`{name}`", rows[0]


def test_help_prints_each_flags_text_default_and_yaml_key_under_its_section() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "xlsr_dist.train", "--help"],
        cwd=ROOT,
        env=base_env(COLUMNS="100"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = _squeezed(proc.stdout)
    headers = [out.index(f"{section}:{_squeezed(docs.section_doc(section))}--") for section in SECTIONS]
    assert headers == sorted(headers)
    bounds = dict(zip(SECTIONS, zip(headers, [*headers[1:], len(out)])))
    defaults = Config().flat()
    metavars = {a.dest: a.metavar for a in argparser()._actions}
    for section, cls in section_classes().items():
        start, end = bounds[section]
        for field in dataclasses.fields(cls):
            text = docs.flag_help(field.name, defaults[field.name]).replace("%%", "%")
            assert text.endswith(f"(default: {docs.show_default(defaults[field.name])}; YAML key: {field.name})")
            entry = f"--{field.name}{metavars[field.name]}{_squeezed(text)}"
            assert start < out.find(entry, start) < end, (section, field.name, text)


def test_the_parser_knows_every_flag_once() -> None:
    options = [a.option_strings[0] for a in argparser()._actions if a.option_strings]
    assert sorted(options) == sorted(["-h", "--config", "--local_rank", *(f"--{n}" for n in FLAGS)])
