"""The NequIP adapter (dens.models.nequip; the optional extra ``nequip``), what only this family
has: the extra it names when nequip is missing, equivariance without odd-parity copies, the DeNS
modules entering through nequip's extension points, its refusals, the dtype cast, the training
engine's checkpoint/resume and the ASE calculator. The contract of every family (equivariance of
every head, DeNS switches, presets and parameter counts) is tests/models/test_model_contract.py.
The module is skipped without nequip (``pip install -e '.[nequip]'``)."""

from __future__ import annotations

import sys
from pathlib import Path

import ase.build
import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from e3nn import o3

from dens.data.batch import Batch, Data
from dens.data.structures import atoms_to_data
from dens.errors import ModelNotAvailableError
from dens.models import model_class
from dens.pipeline.registry import load_registry


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_without_nequip_the_family_names_the_extra(monkeypatch) -> None:
    """Fails if model_class lets the bare ImportError through (or imports nequip elsewhere)."""
    for name in [
        m for m in sys.modules if m == "nequip" or m.startswith(("nequip.", "dens.models.nequip"))
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nequip", None)  # import nequip -> ModuleNotFoundError
    with pytest.raises(ModelNotAvailableError, match=r"pip install -e '\.\[nequip\]'"):
        model_class("nequip")


nequip = pytest.importorskip("nequip")
from model_cases import FAMILY_CASES, molecules  # noqa: E402

from dens.models.nequip import NequIP, NequIPSettings  # noqa: E402
from dens.models.nequip.network import builder_arguments  # noqa: E402

SMALL = FAMILY_CASES["nequip"].tiny


def small_model(force_encoding: bool, noise_head: bool, **kwargs) -> NequIP:
    torch.manual_seed(0)
    kwargs = {**SMALL, **kwargs}
    settings = NequIPSettings(**kwargs, force_encoding=force_encoding, noise_head=noise_head)
    return NequIP(settings).eval()


def run(model: NequIP, batch: Batch, forces: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return model(batch, forces if model.force_encoding else None, predict_noise=model.noise_head)


@pytest.mark.parametrize(("force_encoding", "noise_head"), [(False, False), (True, True)])
def test_without_odd_parity_copies_every_head_is_equivariant(
    force_encoding: bool, noise_head: bool
) -> None:
    """parity=False (the mini preset's features; the contract builds nequip's default, both
    parities), float64: energy invariant, forces and noise rotate with the structure and the
    encoded forces, to ~1e-14 (measured <= 3e-15). A noise head reading scalars, or an encoding
    of the unrotated forces, would leave O(0.1) errors."""
    model = small_model(force_encoding, noise_head, parity=False)
    batch = molecules()
    forces = torch.randn(
        batch.num_nodes, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    forces[::3] = 0.0  # atoms without an encoded force
    torch.manual_seed(2)
    rot = o3.rand_matrix(dtype=torch.float64)
    moved = batch.clone()
    moved.pos = batch.pos @ rot.T + torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)
    out, out_rot = run(model, batch, forces), run(model, moved, forces @ rot.T)
    errors = {
        "energy": (out_rot["energy"] - out["energy"]).abs().max().item(),
        "forces": (out_rot["forces"] - out["forces"] @ rot.T).abs().max().item(),
    }
    if noise_head:
        errors["noise"] = (out_rot["noise"] - out["noise"] @ rot.T).abs().max().item()
        assert out["noise"].abs().max() > 1e-3  # a real vector output, not zeros
    assert max(errors.values()) < 1e-12, errors


def test_dens_modules_enter_through_nequip_extension_points() -> None:
    """The nequip network is nequip's own, with the two DeNS modules inserted: the encoding after
    the first interaction, the noise head before the last (scalars-only) one."""
    model = small_model(True, True, num_layers=3)
    names = [name for name, _ in model.nequip.model.func.named_children()]
    assert names[names.index("layer0_convnet") + 1] == "dens_force_encoding"
    assert names[names.index("layer2_convnet") - 1] == "dens_noise_head"
    assert type(model.nequip).__module__.startswith("nequip.")


def test_refusals() -> None:
    with pytest.raises(ValueError, match="no attention or layer normalisation"):
        NequIPSettings(**SMALL, attention=True)
    with pytest.raises(ValueError, match="num_layers >= 2"):
        NequIPSettings(**{**SMALL, "num_layers": 1}, noise_head=True)
    with pytest.raises(ValueError, match=r"model_dtype must be one of \['float32', 'float64'\]"):
        NequIPSettings(model_dtype="float16")
    with pytest.raises(ValueError, match=r"type_names must be element symbols, got \['H', 'Xx'\]"):
        NequIPSettings(type_names=["H", "Xx"])
    model = small_model(False, False)
    batch = molecules()
    batch.atomic_numbers[0] = 3  # Li: below the table's size, not a type of the model
    with pytest.raises(ValueError, match=r"atomic numbers \[3\] are not among"):
        model(batch)


def test_settings_are_immutable_and_nequip_gets_its_own_forms() -> None:
    """The settings keep tuples, floats and copies of the mappings given; nequip's builder gets
    lists, floats and dicts, its own arguments unrenamed and the nonlinearities as convnet_*."""
    scalars = {"e": "silu", "o": "tanh"}
    settings = NequIPSettings(
        r_max=5, num_features=[8, 4, 2], type_names=["H", "O"], nonlinearity_scalars=scalars
    )
    scalars["e"] = "ssp"
    assert settings.num_features == (8, 4, 2) and settings.type_names == ("H", "O")
    assert settings.r_max == 5.0 and isinstance(settings.r_max, float)
    assert settings.nonlinearity_scalars == {"e": "silu", "o": "tanh"}
    with pytest.raises(AttributeError):
        settings.r_max = 6.0  # type: ignore[misc]
    arguments = builder_arguments(settings, seed=2**31 + 7)
    assert arguments["seed"] == 7 and arguments["r_max"] == 5.0
    assert arguments["num_features"] == [8, 4, 2] and arguments["type_names"] == ["H", "O"]
    assert arguments["convnet_nonlinearity_scalars"] == {"e": "silu", "o": "tanh"}
    assert "nonlinearity_scalars" not in arguments and "convnet_nonlinearity_gates" not in arguments
    assert not {"force_encoding", "noise_head", "attention", "layer_norm"} & set(arguments)


def test_to_dtype_casts_nequip_build_time_dtypes() -> None:
    """A float32 build cast with .double() gives float64 outputs equal to a float64 build's
    (nequip's _output_dtype attributes follow); without NequIP._apply it raises a dtype error."""
    model64 = small_model(True, True)
    model32 = small_model(True, True, model_dtype="float32")
    model32.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
    model32.double()
    batch = molecules()
    forces = torch.randn(batch.num_nodes, 3, dtype=torch.float64)
    a, b = run(model64, batch, forces), run(model32, batch, forces)
    for key in ("energy", "forces", "noise"):
        assert b[key].dtype == torch.float64
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-6)


def ethanol_frames(n: int, seed: int) -> list[Data]:
    """Rattled ethanol labelled with ASE's EMT (which has H, C, O parameters)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = ase.build.molecule("CH3CH2OH")
        atoms.positions += rng.normal(0.0, 0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_forces()
        out.append(atoms_to_data(atoms, labels=True))
    return out


def test_trains_resumes_and_serves_ase_through_the_registry(tmp_path: Path) -> None:
    """The smoke-scale md17-ethanol/nequip-dens run: dens train's engine, a crash in epoch 2
    resumed to the uninterrupted run's weights bit for bit, then the ASE calculator on best.pt
    (forces = -dE/dx by finite differences)."""
    from dens.calculator import DeNSCalculator
    from dens.checkpoint import load_checkpoint
    from dens.train import train

    experiment = load_registry({"scale": "smoke"}).resolve("md17-ethanol/nequip-dens")
    experiment["optim"].update(epochs=2, batch_size=4, eval_batch_size=4)
    frames = ethanol_frames(12, seed=0)
    train_set, val_set = frames[:8], frames[8:]
    straight = tmp_path / "straight"
    train(experiment, train_set, val_set, straight, progress=False)

    class Crashing(list):
        reads = 0

        def __getitem__(self, index):
            Crashing.reads += 1
            if Crashing.reads == len(train_set) * 2 + 3:  # normaliser fit, epoch 1, epoch 2
                raise RuntimeError("simulated node failure")
            return super().__getitem__(index)

    resumed = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated node failure"):
        train(experiment, Crashing(train_set), val_set, resumed, progress=False)
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["epoch"] == 1
    train(experiment, train_set, val_set, resumed, progress=False)
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    atoms = ase.build.molecule("CH3CH2OH")
    atoms.calc = DeNSCalculator(straight / "checkpoints" / "best.pt", dtype=torch.float64)
    forces = atoms.get_forces()
    step = 1e-4
    for index, axis in ((0, 0), (4, 2)):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[index, axis] += step
        minus.positions[index, axis] -= step
        plus.calc = minus.calc = atoms.calc
        numeric = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * step)
        assert forces[index, axis] == pytest.approx(numeric, rel=1e-5, abs=1e-6)
