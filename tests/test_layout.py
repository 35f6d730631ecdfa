"""The library and the pipeline are two halves: no module of the library (every module of
``dens`` outside ``dens/pipeline/``) imports the pipeline (``dens.pipeline``: registry, paths,
tables, figures, curves, report, submissions, Slurm, the ``dens`` command), at the top of a
file, inside a function, or by name through importlib. ``dens/__main__.py`` is the command's
entry point (``python -m dens``) and belongs to the pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dens"
PIPELINE = "dens.pipeline"
ENTRY_POINTS = {PACKAGE / "__main__.py"}


def module_name(path: Path) -> str:
    """dens.data.aselmdb for dens/data/aselmdb.py, dens.data for dens/data (or its __init__.py)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, package: str) -> set[str]:
    """Every module the code ``source`` of a module in ``package`` imports (relative imports
    resolved; ``from a import b`` counts as ``a`` and ``a.b``), and every string constant naming
    a dens module (importlib)."""
    parts = package.split(".")
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names |= {module, *(f"{module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith("dens.") and " " not in node.value:
                names.add(node.value)
    return names


def is_pipeline(name: str) -> bool:
    return name == PIPELINE or name.startswith(f"{PIPELINE}.")


def pipeline_imports(path: Path) -> list[str]:
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    return sorted(filter(is_pipeline, imported_names(path.read_text(), package)))


LIBRARY = sorted(
    path
    for path in PACKAGE.rglob("*.py")
    if PACKAGE / "pipeline" not in path.parents and path not in ENTRY_POINTS
)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda path: module_name(path))
def test_a_library_module_never_imports_the_pipeline(path: Path) -> None:
    assert pipeline_imports(path) == [], (
        f"{path.relative_to(PACKAGE.parent)} imports the pipeline; the library must work without "
        "it (move the code to dens/pipeline/ or pass what it needs in)"
    )


def test_the_library_and_the_pipeline_both_exist() -> None:
    assert len(LIBRARY) > 50
    assert module_name(PACKAGE / "denoising" / "__init__.py") == "dens.denoising"
    assert (PACKAGE / "pipeline" / "registry" / "__init__.py").is_file()


@pytest.mark.parametrize(
    "source",
    [
        "from dens.pipeline import paths\n",
        "def f():\n    from dens.pipeline.registry import load_registry\n",
        "from dens import pipeline\n",
        "from .pipeline import cli\n",
        "import dens.pipeline.tables\n",
        "import importlib\nimportlib.import_module('dens.pipeline.slurm')\n",
    ],
)
def test_every_way_of_importing_the_pipeline_is_seen(source: str) -> None:
    assert any(map(is_pipeline, imported_names(source, "dens")))
