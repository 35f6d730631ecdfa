"""The contract every model family keeps (dens.models.FAMILIES), checked for each family alike:
equivariance of every head (float64), the DeNS switches (the force encoding and noise head as
separate modules the baseline lacks, its inputs refused by name without them, the baseline's
initial weights shared), the presets of config/models.yaml (every constructor argument but the
switches) and their parameter counts as ``dens params`` reports them, and the import of fairchem
checkpoints where a family has an importer (dens.pipeline.checkpoint_import.IMPORTERS).

How each family is exercised (tiny model, inputs, tolerances, counts, checkpoints) is its row of
``FAMILY_CASES`` (tests/models/model_cases.py); a family's own tests (fixture parity with the
official code, its blocks, its ablations) stay in its file. NequIP needs the optional
``nequip`` package: its cases are skipped without it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import pytest
import torch
import yaml
from e3nn import o3
from model_cases import FAMILY_CASES, FIXTURES, FamilyCase, slabs

from dens.data.batch import Batch
from dens.models import FAMILIES, build_model, build_network, count_parameters, model_class

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny ops: threads only contend
PRESETS = yaml.safe_load((FIXTURES.parents[1] / "config" / "models.yaml").read_text())
SWITCHES = {"force_encoding", "noise_head", "attention", "layer_norm"}
DENS_CASES = [(False, False), (True, False), (False, True), (True, True)]
"""(force_encoding, noise_head): the baseline, each DeNS module alone, both."""


def case(family: str) -> FamilyCase:
    """The family's case; skips when its optional package is missing."""
    spec = FAMILY_CASES[family]
    if spec.requires and importlib.util.find_spec(spec.requires) is None:
        pytest.skip(f"{family} needs the optional package {spec.requires!r}")
    return spec


def tiny_model(family: str, force_encoding: bool, noise_head: bool, seed: int = 0):
    spec = case(family)
    torch.manual_seed(seed)
    switches = {"force_encoding": force_encoding, "noise_head": noise_head}
    model = build_network(family, {**spec.tiny, **switches})
    spec.prepare(model)
    return model.double().eval()


def force_input(data: Batch, seed: int = 1) -> torch.Tensor:
    """Random forces to encode, every third atom without one (a zero row)."""
    gen = torch.Generator().manual_seed(seed)
    forces = torch.randn(data.pos.shape[0], 3, generator=gen, dtype=torch.float64)
    forces[::3] = 0.0
    return forces


def test_every_registered_family_has_a_contract_case() -> None:
    assert set(FAMILY_CASES) == set(FAMILIES)


# -- equivariance ------------------------------------------------------------------------------
@pytest.mark.parametrize(("force_encoding", "noise_head"), DENS_CASES)
@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_rotations_leave_energy_invariant_and_rotate_forces_and_noise(
    family: str, force_encoding: bool, noise_head: bool
) -> None:
    """x -> R x + t (the cell rotated too, the encoded forces rotated), float64: the energy is
    invariant, forces and noise rotate with R; errors relative to the largest output."""
    model = tiny_model(family, force_encoding, noise_head)
    data = case(family).structures()
    forces = force_input(data) if force_encoding else None
    torch.manual_seed(2)
    rotation = o3.rand_matrix(dtype=torch.float64)
    moved = data.clone()
    moved.pos = data.pos @ rotation.T + torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)
    if getattr(data, "cell", None) is not None:
        moved.cell = data.cell @ rotation.T
    kwargs = {"predict_noise": noise_head}
    out = model(data, forces, **kwargs)
    out_moved = model(moved, None if forces is None else forces @ rotation.T, **kwargs)
    expected = {"energy": out["energy"], "forces": out["forces"] @ rotation.T}
    if noise_head:
        expected["noise"] = out["noise"] @ rotation.T
    assert set(out_moved) == set(expected)
    for key, value in expected.items():
        scale = float(value.detach().abs().max())
        assert scale > 1e-6, (key, scale)  # not trivially zero
        error = float((out_moved[key] - value).detach().abs().max()) / scale
        assert error < case(family).rel[key], (key, error)


@pytest.mark.parametrize(
    "family", sorted(f for f, spec in FAMILY_CASES.items() if spec.structures is slabs)
)
def test_lattice_images_change_nothing(family: str) -> None:
    """Periodic families: moving an atom by a lattice vector leaves the edge vectors, and so
    every output, as they were (no discretisation error)."""
    model = tiny_model(family, True, True)
    data = case(family).structures()
    forces = force_input(data)
    wrapped = data.clone()
    wrapped.pos = data.pos.clone()
    wrapped.pos[0] += data.cell[0, 0] - 2 * data.cell[0, 1]  # atom 0 by a lattice vector
    wrapped.pos[-1] -= data.cell[1, 2]  # last atom (second structure) through the vacuum
    out = model(data, forces, predict_noise=True)
    out_wrapped = model(wrapped, forces, predict_noise=True)
    for key in ("energy", "forces", "noise"):
        scale = float(out[key].abs().max())
        assert float((out_wrapped[key] - out[key]).abs().max()) <= 1e-9 * scale, key


# -- DeNS switches -----------------------------------------------------------------------------
@pytest.mark.parametrize(("force_encoding", "noise_head"), DENS_CASES)
@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_dens_inputs_and_heads_exist_with_their_switch_only(
    family: str, force_encoding: bool, noise_head: bool
) -> None:
    """The outputs are energy [B] and forces [N, 3], plus noise [N, 3] with a noise head; the
    force input is read with a force encoding (zero rows mean none) and refused by name without
    one, as predict_noise is without a noise head."""
    model = tiny_model(family, force_encoding, noise_head)
    data = case(family).structures()
    n, b = data.pos.shape[0], data.natoms.shape[0]
    out = model(data, predict_noise=noise_head)
    assert out["energy"].shape == (b,) and out["forces"].shape == (n, 3)
    assert ("noise" in out) == noise_head
    if noise_head:
        assert out["noise"].shape == (n, 3)
    else:
        with pytest.raises(ValueError, match="noise_head=True"):
            model(data, predict_noise=True)
    zeros = torch.zeros(n, 3, dtype=torch.float64)
    if not force_encoding:
        with pytest.raises(ValueError, match="no force encoding"):
            model(data, zeros)
        return
    with_zeros = model(data, zeros, predict_noise=noise_head)
    for key in out:
        assert torch.equal(with_zeros[key], out[key]), key
    with_forces = model(data, force_input(data), predict_noise=noise_head)
    assert not torch.allclose(with_forces["forces"], out["forces"])
    with pytest.raises(ValueError, match=r"force_input must be \[N, 3\]"):
        model(data, torch.zeros(3, 3, dtype=torch.float64))


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_dens_modules_add_to_the_baseline_and_start_from_its_weights(family: str) -> None:
    """With one seed every parameter of the baseline starts with the same value in each DeNS
    variant, the global random stream after construction is the same (a fair DeNS-vs-baseline
    comparison), and the two modules add their own parameters independently."""
    spec = case(family)
    params, states = {}, {}
    for switches in DENS_CASES:
        torch.manual_seed(7)
        modules = {"force_encoding": switches[0], "noise_head": switches[1]}
        model = build_network(family, {**spec.tiny, **modules})
        params[switches], states[switches] = dict(model.named_parameters()), torch.get_rng_state()
    baseline = params[(False, False)]
    for switches, variant in params.items():
        assert torch.equal(states[switches], states[(False, False)]), switches
        for name, value in baseline.items():
            assert torch.equal(variant[name], value), (switches, name)
    count = {k: sum(p.numel() for p in v.values() if p.requires_grad) for k, v in params.items()}
    encoding = count[(True, False)] - count[(False, False)]
    noise = count[(False, True)] - count[(False, False)]
    assert encoding > 0 and noise > 0, count
    assert count[(True, True)] == count[(False, False)] + encoding + noise, count


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_a_network_takes_its_settings_object_only(family: str) -> None:
    """The one constructor argument is the family's settings; a mapping is refused by name
    (build_network makes the settings from one)."""
    spec = case(family)
    with pytest.raises(TypeError, match=model_class(family).settings_type.__name__):
        model_class(family)(dict(spec.tiny))


# -- presets and parameter counts --------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_presets_list_every_setting_but_the_switches(family: str) -> None:
    """What an override may change is what a preset lists: every field of the network's settings
    except the switches experiments set by other keys (model.attention, dens ...)."""
    case(family)
    arguments = {item.name for item in dataclasses.fields(model_class(family).settings_type)}
    assert SWITCHES <= arguments
    for name, preset in PRESETS[family].items():
        assert set(preset) == arguments - SWITCHES, name


def count_cases() -> list[tuple[str, str, bool]]:
    return [(f, preset, dens) for f, spec in FAMILY_CASES.items() for preset, dens in spec.counts()]


@pytest.mark.parametrize(("family", "preset", "dens"), count_cases())
def test_presets_have_their_parameter_counts(
    family: str, preset: str, dens: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainable parameters ``dens params`` reports (build_model, count_parameters) of a
    preset with and without the DeNS modules: the official code's, within 3% of the paper's.
    Meta-device builds fix the base seed (drawing it would read a meta tensor)."""
    spec = case(family)
    hyperparameters = {**PRESETS[family][preset], "force_encoding": dens, "noise_head": dens}
    experiment = {"model": {"family": family, "hyperparameters": hyperparameters}}
    if spec.meta:
        network = sys.modules[model_class(family).__module__]
        monkeypatch.setattr(network, "draw_base_seed", lambda: 0)
        with torch.device("meta"):
            model = build_model(experiment)
    else:
        model = build_model(experiment)
    assert isinstance(model, model_class(family))
    count = count_parameters(model)
    assert count == spec.counts()[(preset, dens)], count
    if (preset, dens) in spec.paper:
        paper = spec.paper[(preset, dens)]
        assert abs(count / 1e6 - paper) / paper < 0.03, count


# -- import of fairchem checkpoints ------------------------------------------------------------
def test_the_families_with_a_checkpoint_importer_have_checkpoints_to_import() -> None:
    from dens.pipeline.checkpoint_import import IMPORTERS

    assert set(IMPORTERS) == {f for f, spec in FAMILY_CASES.items() if spec.checkpoints}
    assert set(IMPORTERS) <= set(FAMILIES)


@pytest.mark.parametrize(
    ("family", "checkpoint", "dens"),
    [
        (f, path, dens)
        for f, spec in FAMILY_CASES.items()
        for path, dens in spec.checkpoints.items()
    ],
)
def test_an_imported_checkpoint_is_the_model_its_hyperparameters_build(
    family: str, checkpoint: str, dens: bool
) -> None:
    """What ``dens import-checkpoint`` relies on: the importer gives an eval-mode model of the
    family whose ``info["hyperparameters"]`` (the DeNS modules switched as the checkpoint is)
    build, through the registry's build_model, the same model: same parameters, same outputs."""
    from dens.pipeline.checkpoint_import import importer

    model, info = importer(family)(FIXTURES / checkpoint, dtype=torch.float64)
    assert isinstance(model, model_class(family)) and not model.training
    hyperparameters = info["hyperparameters"]
    assert hyperparameters["force_encoding"] == hyperparameters["noise_head"] == dens
    rebuilt = build_model(
        {
            "model": {
                "family": family,
                "hyperparameters": {**hyperparameters, "attention": True, "layer_norm": True},
            }
        }
    )
    rebuilt = rebuilt.double().eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert count_parameters(rebuilt) == count_parameters(model)
    data = case(family).structures()
    forces = force_input(data) if dens else None
    with torch.no_grad():
        out = model(data, forces, predict_noise=dens)
        out_rebuilt = rebuilt(data, forces, predict_noise=dens)
    assert set(out) == set(out_rebuilt) == {"energy", "forces"} | ({"noise"} if dens else set())
    for key in out:  # each build fits its Wigner-D tables anew (so2.wigner.swap_matrix, a least-
        # squares fit whose last bit varies from call to call on CPU)
        torch.testing.assert_close(out_rebuilt[key], out[key], rtol=1e-10, atol=1e-12)
