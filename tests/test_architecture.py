"""docs/architecture.md stays true: every subcommand and module appears there, and all it names exists."""

import importlib
import json
import re

import pytest

from helpers import cli, paths

DOC = paths.ROOT / "docs" / "architecture.md"
TEXT = DOC.read_text(encoding="utf-8")


def _section(title: str) -> str:
    return TEXT.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def _step_rows() -> list[list[str]]:
    rows = [line.split("|")[1:-1] for line in _section("Step map").splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row] for row in rows[1:]]   # without the header row


def _subcommands() -> set[str]:
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    return set(sub.choices)


def _tree_modules() -> set[str]:
    return set(re.findall(r"^\s+(\w+)\.py\s", _section("Module tree"), re.M))


def _notebook_modules() -> set[str]:
    found = set()
    for book in sorted((paths.ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(book.read_text(encoding="utf-8"))["cells"]:
            for line in "".join(cell["source"]).splitlines() if cell["cell_type"] == "code" else []:
                m = re.match(r"\s*from helpers import (.+)", line)
                if m:
                    found |= {n.strip() for n in m.group(1).split(",")}
    return found


def test_every_subcommand_has_a_row_and_every_row_names_a_real_subcommand():
    named = {m for row in _step_rows() for m in re.findall(r"^`([\w-]+)`", row[3])}
    assert _subcommands() - named == set(), "subcommands missing from docs/architecture.md"
    assert named - _subcommands() == set(), "docs/architecture.md names subcommands that do not exist"


def test_every_module_is_in_the_tree_and_the_tree_names_only_real_modules():
    on_disk = {p.stem for p in (paths.ROOT / "helpers").glob("*.py")}
    assert on_disk - _tree_modules() == set(), "modules missing from the module tree in docs/architecture.md"
    assert _tree_modules() - on_disk == set(), "the module tree names modules that do not exist"
    assert _notebook_modules() <= _tree_modules()


@pytest.mark.parametrize("row", _step_rows(), ids=lambda row: row[0])
def test_the_step_map_names_real_functions_and_notebooks(row):
    step, notebooks, functions = row[0], row[1], row[2]
    for ref in re.findall(r"`(\w+)\.(\w+)`", functions):
        module = importlib.import_module(f"helpers.{ref[0]}")
        assert hasattr(module, ref[1]), f"{step}: helpers.{ref[0]}.{ref[1]} does not exist"
    ids = {b.name.split("-")[0] for b in (paths.ROOT / "notebooks").glob("*.ipynb")}
    for nb_id in re.findall(r"\d+(?:\.\d+)?", notebooks):
        assert nb_id in ids, f"{step}: notebook {nb_id} does not exist"


def test_the_manifests_named_exist():
    for path in re.findall(r"`((?:base|overlays|jobs|grafana)/[\w./-]*)`", _section("Step map")):
        assert (paths.ROOT / "manifests" / path).exists(), path
