"""The house's size limits: no module of ``dens`` over 400 lines but a model network
(``dens/models/<family>/network.py``), no function over 60 lines (signature, docstring and body)
but a model network's constructor."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dens"
MODULE_LINES = 400
FUNCTION_LINES = 60
MODULES = sorted(PACKAGE.rglob("*.py"))


def is_network(path: Path) -> bool:
    return path.name == "network.py" and path.parent.parent == PACKAGE / "models"


def long_functions(source: str, network: bool = False) -> list[str]:
    """``name (line N): L lines`` for each function of ``source`` over FUNCTION_LINES lines, a
    network's constructor (``network``) excepted."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > FUNCTION_LINES and not (network and node.name == "__init__"):
                found.append(f"{node.name} (line {node.lineno}): {lines} lines")
    return found


def test_no_module_but_a_model_network_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in MODULES
        if not is_network(path) and (lines := len(path.read_text().splitlines())) > MODULE_LINES
    }
    assert long == {}


def test_no_function_but_a_network_constructor_is_over_60_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE.parent)): found
        for path in MODULES
        if (found := long_functions(path.read_text(), is_network(path)))
    }
    assert long == {}


def test_the_limit_sees_a_long_function_and_spares_only_a_network_constructor() -> None:
    body = "\n".join(["    x = 1"] * FUNCTION_LINES)
    assert long_functions(f"def f():\n{body}\n") == ["f (line 1): 61 lines"]
    assert long_functions(f"def f():\n{body}\n", network=True) == ["f (line 1): 61 lines"]
    source = f"class Net:\n    def __init__(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n"
    assert long_functions(source, network=True) == []
    assert long_functions(source) == ["__init__ (line 2): 61 lines"]
    assert is_network(PACKAGE / "models" / "escn" / "network.py")
    assert not is_network(PACKAGE / "models" / "so3" / "edge_graph.py")
