"""The places adding a model family touches: its own package and one registration, and the
configuration that gives it presets and runs it. Nothing else of the library or the workflow
names a family, so nothing else changes when one is added.

Every family is named in
  - ``dens/models/<family>/``: its own package, which names no other family;
  - ``dens/models/__init__.py``: ``FAMILIES``, the registration (``OPTIONAL_EXTRAS`` too when it
    needs an optional package, whose extra ``pyproject.toml`` then defines);
  - ``config/models.yaml``: its presets and their sources (the registry refuses a family it has
    no presets for, and presets of a family it does not register);
  - ``tests/models/model_cases.py``: how tests/models/test_model_contract.py exercises it.
Where it has one:
  - ``dens/pipeline/checkpoint_import.py``: ``IMPORTERS``, its fairchem checkpoint importer;
  - ``dens/__init__.py``: the public API (``Equiformer``);
  - ``config/scales/*.yaml``: the smaller preset a scale trains instead;
  - ``config/experiments.yaml`` (and tables.yaml by experiment name): the runs that train it.
The workflow (Snakefile, rules, schemas) names none: the schemas leave the family names to
the registry, which reads ``dens.models.FAMILIES``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dens.errors import ConfigError
from dens.models import FAMILIES
from dens.pipeline.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
REGISTRATION = {
    "dens/models/__init__.py": "FAMILIES: the registration",
    "dens/pipeline/checkpoint_import.py": "IMPORTERS: a family's fairchem checkpoint importer",
    "dens/__init__.py": "the public API",
}
"""Library files outside the families' packages that may name a family."""
MODULE = re.compile(r"^dens\.models\.(\w+)(?:[.:]|$)")


def named_families(path: Path) -> set[str]:
    """The families a Python file names in code: a string constant equal to a family's name or
    naming its module (``dens.models.escn...``), or an import of its package. Docstrings and
    comments (prose) do not count."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            module = MODULE.match(name)
            if name in FAMILIES:
                found.add(name)
            elif module and module.group(1) in FAMILIES:
                found.add(module.group(1))
    return found


def family_of(path: Path) -> str | None:
    """The family whose package holds ``path`` (dens/models/<family>/...), else None."""
    parts = path.relative_to(ROOT).parts
    if parts[:2] == ("dens", "models") and len(parts) > 3 and parts[2] in FAMILIES:
        return parts[2]
    return None


def test_the_library_names_a_family_only_in_its_package_and_its_registration() -> None:
    misplaced = {}
    for path in sorted((ROOT / "dens").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        named = named_families(path)
        own = family_of(path)
        allowed = {own} if own else (set(FAMILIES) if relative in REGISTRATION else set())
        if named - allowed:
            misplaced[relative] = sorted(named - allowed)
    assert not misplaced, f"files naming a model family outside its places: {misplaced}"
    assert named_families(ROOT / "dens" / "models" / "__init__.py") == set(FAMILIES)


def yaml_names(document: Any) -> set[str]:
    """Every mapping key and string value of a YAML document."""
    if isinstance(document, dict):
        return set(map(str, document)) | set().union(*map(yaml_names, document.values()))
    if isinstance(document, list):
        return set().union(*map(yaml_names, document))
    return {document} if isinstance(document, str) else set()


def test_the_workflow_names_no_family() -> None:
    """Snakefile, rules, schemas, environments, report templates: no family in their keys or
    values (YAML) or in a quoted name or module path (the rest)."""
    alternatives = "|".join(map(re.escape, FAMILIES))
    named_in_text = re.compile(rf"""["']({alternatives})["'.:]|dens\.models\.({alternatives})\b""")
    misplaced = {}
    for path in sorted([ROOT / "Snakefile", *(ROOT / "workflow").rglob("*")]):
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            named = yaml_names(yaml.safe_load(text)) & set(FAMILIES)
        else:
            named = {a or b for a, b in named_in_text.findall(text)}
        if named:
            misplaced[path.relative_to(ROOT).as_posix()] = sorted(named)
    assert not misplaced, f"workflow files naming a model family: {misplaced}"


def test_the_configuration_names_the_registered_families() -> None:
    """config/models.yaml has presets for exactly the registered families; the scales and the
    experiments name no other."""
    presets = yaml.safe_load((ROOT / "config" / "models.yaml").read_text())
    sources = presets.pop("sources")
    assert set(presets) == set(FAMILIES)
    assert set(sources) <= set(FAMILIES)
    for path in sorted((ROOT / "config" / "scales").glob("*.yaml")):
        assert set(yaml.safe_load(path.read_text()).get("models", {})) <= set(FAMILIES), path.name
    registry = load_registry({"scale": "paper"})
    families = {registry.experiment(name)["model"]["family"] for name in registry.experiments}
    assert families <= set(FAMILIES)


def edit_yaml(path: Path, change) -> None:
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document))


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        (
            "models.yaml",
            lambda d: d.update(painn={"small": {"num_layers": 2}}),
            r"config/models\.yaml: unknown model family 'painn'.*dens\.models\.FAMILIES",
        ),
        (
            "models.yaml",
            lambda d: d.pop("escn"),
            r"config/models\.yaml: no presets for the model families escn",
        ),
        (
            "scales/mini.yaml",
            lambda d: d["models"].update(painn={"presets": {"big": "small"}}),
            r"scales/mini\.yaml: models: unknown model family 'painn'",
        ),
    ],
    ids=["presets-of-an-unregistered-family", "a-family-without-presets", "scale-of-an-unknown"],
)
def test_a_family_the_registration_does_not_know_is_refused(
    pipeline_copy: Path, file: str, change, message: str
) -> None:
    edit_yaml(pipeline_copy / "config" / file, change)
    with pytest.raises(ConfigError, match=message):
        load_registry({"scale": "mini"}, root=pipeline_copy)


def test_an_experiment_of_an_unknown_family_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "experiments": {
                    "md17-{molecule}/painn": {
                        "matrix": {"molecule": ["aspirin"]},
                        "extends": ["md17/equiformer_dens/se_l2"],
                        "model": {"family": "painn"},
                        "source": "a test",
                    }
                }
            }
        )
    )
    with pytest.raises(ConfigError, match=r"md17-aspirin/painn.*unknown model family 'painn'"):
        load_registry({"scale": "mini", "extra_experiments": [str(path)]})
