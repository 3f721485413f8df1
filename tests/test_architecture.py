"""The house rules, checked on the code itself: import contracts, short functions and classes, every
module saying what it offers, and tests that mirror the package."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "ffdi_tune"
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 200


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def span(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def test_import_contracts_hold():
    # the layers, search/ensemble independence, Ray under search/ only, MLflow under tracking/ only
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    done = subprocess.run([lint], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def test_no_function_over_60_lines_and_no_class_over_200():
    too_long = []
    for path in modules():
        for node in ast.walk(parsed(path)):
            limit = {
                ast.FunctionDef: MAX_FUNCTION_LINES,
                ast.AsyncFunctionDef: MAX_FUNCTION_LINES,
                ast.ClassDef: MAX_CLASS_LINES,
            }.get(type(node))
            if limit is not None and span(node) > limit:
                too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} {span(node)}")
    assert not too_long, "\n".join(too_long)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_has_a_docstring_and_says_what_it_offers(path):
    tree = parsed(path)
    assert ast.get_docstring(tree), "module docstring missing"
    if path.name != "__main__.py":
        names = {
            t.id
            for n in tree.body
            if isinstance(n, ast.Assign)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        assert "__all__" in names, "__all__ missing"


def test_unit_tests_mirror_the_package():
    # tests/<subpackage>/test_<module>.py names a module of ffdi_tune/<subpackage>/
    strays = []
    for test_file in REPO.glob("tests/*/test_*.py"):
        sub = test_file.parent.name
        if sub == "e2e":
            continue
        module = PACKAGE / sub / (test_file.stem.removeprefix("test_") + ".py")
        if not module.exists():
            strays.append(str(test_file.relative_to(REPO)))
    assert not strays, f"test files naming no module: {strays}"


def test_test_file_names_are_unique():
    # pytest imports test files by their base name from every folder
    stems = [p.stem for p in REPO.glob("tests/**/test_*.py")]
    assert len(stems) == len(set(stems)), sorted(s for s in stems if stems.count(s) > 1)
