"""The package's layers (docs/architecture.md): every import, inside functions too, read with ``ast``.

A sub-package imports only the sub-packages below it; no module imports another that (through any
chain) imports it back; nothing but the command line and the package face sits directly in
``pipeline/``. The tests mirror the package: ``tests/<layer>/test_<module or behaviour>.py``, plus
``tests/system/`` for whole-system tests, shared fixtures and helpers in ``tests/conftest.py``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"
# Bottom to top: each may import the ones before it, never one after it.
LAYERS = ["core", "masks", "data", "models", "inference", "lineage", "stages"]
TOP_LEVEL = {"__init__.py", "__main__.py"}
TESTS = ROOT / "tests"
# Where a test goes: the folder of the layer it tests, or system/ for several stages, the command line end
# to end, a real browser. Only this file (the package's own structure) and the shared conftest.py sit above.
TEST_FOLDERS = [*LAYERS, "system"]
TESTS_TOP_LEVEL = {"__init__.py", "conftest.py", "test_architecture.py"}
# A test file is named by the module or behaviour it tests, never by when or why it was written.
HISTORY_NAME = re.compile(r"round|issue|sprint|(^|_)(pr|r|v)?\d+($|_)|\d{4}[-_]?\d{2}[-_]?\d{2}", re.I)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py", known)


def imports_in(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The pipeline modules that module ``name`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == "pipeline" or t.startswith("pipeline."))
    return found


def layer(module: str) -> int:
    """Index in LAYERS; the package face and the command line stand above every layer."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return len(LAYERS)


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}


def test_every_import_is_a_known_module():
    mods = set(modules())
    unknown = {(m, t) for m, targets in graph().items() for t in targets if t not in mods}
    assert not unknown, f"imports of modules that do not exist: {sorted(unknown)}"


def test_no_upward_import():
    upward = [
        f"{m} ({LAYERS[layer(m)]}) imports {t}"
        for m, targets in graph().items()
        if layer(m) < len(LAYERS)
        for t in sorted(targets)
        if layer(t) > layer(m)
    ]
    assert not upward, "imports from a lower layer up to a higher one:\n" + "\n".join(upward)


def test_no_import_circle():
    g = graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_modules_sit_in_their_layers():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in TOP_LEVEL)
    assert not loose, f"modules directly in pipeline/ (put each in the sub-package of its concern): {loose}"
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(LAYERS)
    for pkg in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / pkg / "__init__.py").read_text()))
        assert doc and "Imports:" in doc, f"pipeline/{pkg}/__init__.py: a docstring saying what it holds and imports"


def test_the_architecture_page_shows_these_layers():
    """docs/architecture.md's diagram lists the layers top to bottom, as this test enforces them."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    diagram = re.search(r"```text\n(.*?)```", text, re.S).group(1)
    shown = [m.group(1) for m in re.finditer(r"^(\w+)/\s", diagram, re.M)]
    assert shown == list(reversed(LAYERS))


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from ..stages.train import run\n", "pipeline.stages.train"),
        ("def f():\n    from ..stages import train\n", "pipeline.stages.train"),
        ("import pipeline.stages.report as r\n", "pipeline.stages.report"),
        ("from . import rle\n", "pipeline.masks.rle"),
    ],
)
def test_the_reader_sees_every_kind_of_import(source, expected):
    """The check is only as good as its reader: top-level, in-function, absolute and relative imports all count."""
    found = imports_in(source, "pipeline.masks.probe", False, set(modules()))
    assert found == {expected}


def test_tests_mirror_the_package():
    top = sorted(p.name for p in TESTS.glob("*.py") if p.name not in TESTS_TOP_LEVEL)
    assert not top, f"test files directly in tests/ (put each in tests/<layer>/ or tests/system/): {top}"
    folders = sorted(p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    assert folders == sorted(TEST_FOLDERS), f"tests/ folders: {folders}; expected one per layer and system/"
    for folder in TEST_FOLDERS:
        assert (TESTS / folder / "__init__.py").is_file(), f"tests/{folder}/__init__.py missing"
        assert not [p for p in (TESTS / folder).iterdir() if p.is_dir() and p.name != "__pycache__"], (
            f"tests/{folder}/: no sub-folders (one level, as the package)"
        )
        others = [
            p.name for p in (TESTS / folder).glob("*.py") if p.name != "__init__.py" and not p.name.startswith("test_")
        ]
        assert not others, f"tests/{folder}/{others}: shared fixtures and helpers go in tests/conftest.py"


def test_test_files_are_named_by_what_they_test():
    named = sorted(str(p.relative_to(TESTS)) for p in TESTS.rglob("test_*.py") if HISTORY_NAME.search(p.stem[5:]))
    assert not named, f"test files named after a round, an issue or a date (name them by module or behaviour): {named}"


@pytest.mark.parametrize("name", ["test_round3", "test_issue30", "test_faults_2024_05_01", "test_r4", "test_20240501"])
def test_history_names_are_recognised(name):
    assert HISTORY_NAME.search(name[5:])


@pytest.mark.parametrize(
    "name", ["test_rle", "test_train_ddp", "test_submission_resume", "test_engine_cuda", "test_tta"]
)
def test_module_names_pass(name):
    assert not HISTORY_NAME.search(name[5:])
