"""One MD17 training step of ours equals the official Equiformer code's, with and without DeNS.

Reference: tests/fixtures/equiformer_md17/ (README.md), the official atomicarchitects/equiformer
code at 64cb7866 (``main_md17_dens.py`` / ``main_md17.py`` training steps on the official
models, mini Lmax=2 size, float64, its random draws recorded and injected here). Our side is
the engine's ``dens.training.losses.batch_loss`` with the recipe of config/experiments.yaml
(md17-aspirin/equiformer-l2-dens and equiformer-l2): every loss term to 1e-6 relative and every
parameter's gradient to 1e-5 relative (to the largest entry of that gradient), in float64.
Also the energy of a pair crossing the 5 Å cutoff: the official model is discontinuous there
(the radial basis vanishes at the cutoff, the radial MLP's biases and offset do not, and the
attention softmax gains an edge), and ours matches it on both sides.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dens.data.batch import Batch, Data
from dens.denoising import (
    KCAL_PER_MOL_PER_EV,
    Corruption,
    DeNSSettings,
    dens_coefficient,
    force_encoding_input,
)
from dens.models.equiformer import Equiformer, EquiformerSettings
from dens.models.equiformer.official_import import (
    import_official_state_dict,
    official_model_kwargs,
)
from dens.normalization import NUM_ELEMENTS, Normalizer
from dens.pipeline.registry import load_registry
from dens.training.losses import batch_loss
from dens.training.settings import loss_settings

FIXTURE = Path(__file__).parent / "fixtures" / "equiformer_md17" / "reference_outputs.pt"
EXPERIMENTS = {"dens": "md17-aspirin/equiformer-l2-dens", "baseline": "md17-aspirin/equiformer-l2"}


@pytest.fixture(scope="module")
def ref() -> dict:
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def recipes() -> dict[str, dict]:
    registry = load_registry({"scale": "paper"})
    return {name: registry.resolve(experiment) for name, experiment in EXPERIMENTS.items()}


def official_model(ref: dict, which: str) -> Equiformer:
    """Our model with the official weights of the fixture (float64, training mode)."""
    dens = which == "dens"
    config = ref["meta"]["dens_model" if dens else "baseline_model"]
    torch.manual_seed(0)
    model = Equiformer(EquiformerSettings(**official_model_kwargs(config, dens))).double()
    model.load_state_dict(import_official_state_dict(ref[which]["weights"], model))
    return model.train()


def our_batch(ref: dict) -> tuple[Batch, Normalizer]:
    """The fixture's molecules with labels in eV (the reference's are kcal/mol, MD17's units)
    and the official normalisation (energy mean and std of the training set; forces / std)."""
    s = ref["structures"]
    data, start = [], 0
    for b, n in enumerate(s["natoms"].tolist()):
        atoms = slice(start, start + n)
        data.append(
            Data(
                pos=s["pos"][atoms],
                atomic_numbers=s["atomic_numbers"][atoms],
                natoms=torch.tensor([n]),
                energy=s["energy"][b : b + 1] / KCAL_PER_MOL_PER_EV,
                forces=s["forces"][atoms] / KCAL_PER_MOL_PER_EV,
                fixed=torch.zeros(n, dtype=torch.bool),
                md_split=torch.tensor([False]),
            )
        )
        start += n
    meta = ref["meta"]
    normalizer = Normalizer(
        mean=meta["task_mean"] / KCAL_PER_MOL_PER_EV,
        std=meta["task_std"] / KCAL_PER_MOL_PER_EV,
        element_references=torch.zeros(NUM_ELEMENTS, dtype=torch.float64),
    )
    return Batch.from_data_list(data), normalizer


def injected_corruption(ref: dict, batch: Batch, dens: DeNSSettings) -> Corruption:
    """The official draws (main_md17_dens.py:514-548) as our Corruption."""
    draws = ref["dens"]["draws"]
    mask = draws["noise_mask"]
    noise = torch.where(mask[:, None], draws["noise_vec"], torch.zeros_like(draws["noise_vec"]))
    forces = force_encoding_input(batch.forces, 1.0, dens.force_encoding_units)
    return Corruption(
        dens_structures=draws["dens_structures"],
        corrupted=mask,
        noise=noise,
        pos=batch.pos + noise,
        force_input=torch.where(mask[:, None], forces, torch.zeros_like(forces)),
        sigma=dens.sigma,
    )


def relative(ours: torch.Tensor | None, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs|; a gradient the official step left at zero must be
    zero (or absent) here."""
    ours = torch.zeros_like(theirs) if ours is None else ours.detach()
    scale = theirs.abs().max()
    error = (ours - theirs).abs().max()
    return float(error / scale) if scale > 0 else float(error)


def test_recipe_is_the_official_scripts(ref: dict, recipes: dict) -> None:
    """The fixture ran the official scripts' settings; our MD17 experiments hold the same."""
    args = ref["meta"]["args"]
    for recipe in recipes.values():
        optim = recipe["optim"]
        assert optim["energy_coefficient"] == args["energy_weight"]
        assert optim["force_coefficient"] == args["force_weight"]
        assert optim["epochs"] == args["epochs"]
    dens = DeNSSettings.from_config(recipes["dens"]["dens"])
    assert (dens.p, dens.sigma, dens.corruption_ratio, dens.coefficient) == (
        args["denoising_pos_prob"],
        args["denoising_pos_std"],
        args["denoising_corrupt_ratio"],
        args["denoising_pos_weight"],
    )
    assert dens.decision == "structure"  # main_md17_dens.py:523-528: one draw per structure
    assert dens.coefficient_decay == "linear"
    assert dens.force_encoding_units == "kcal/mol/Å"
    coefficient = dens_coefficient(dens, ref["meta"]["epoch"], args["epochs"])
    assert coefficient == pytest.approx(ref["dens"]["denoising_pos_weight"], rel=1e-15)


def test_draws_mix_dens_and_original_structures(ref: dict) -> None:
    """The step exercises every term: some structures are DeNS ones, some not; a DeNS
    structure has corrupted and uncorrupted atoms."""
    draws = ref["dens"]["draws"]
    assert 0 < int(draws["dens_structures"].sum()) < draws["dens_structures"].numel()
    assert int(draws["noise_mask"].sum()) >= 2
    natoms = ref["structures"]["natoms"]
    structure = torch.repeat_interleave(torch.arange(natoms.numel()), natoms)
    in_dens = draws["dens_structures"][structure]
    assert bool((in_dens & ~draws["noise_mask"]).any())


@pytest.mark.parametrize("which", ["dens", "baseline"])
def test_training_step_matches_official(ref: dict, recipes: dict, which: str) -> None:
    """Loss terms to 1e-6 and every parameter's gradient to 1e-5 (relative), float64."""
    recipe = recipes[which]
    model = official_model(ref, which)
    batch, normalizer = our_batch(ref)
    losses = loss_settings(recipe["optim"])
    assert losses.reduction == "atom"  # main_md17_dens.py:389-397, main_md17.py:384-386
    official = ref[which]["losses"]
    if which == "dens":
        dens = DeNSSettings.from_config(recipe["dens"])
        corruption = injected_corruption(ref, batch, dens)
        coefficient = dens_coefficient(dens, ref["meta"]["epoch"], recipe["optim"]["epochs"])
        terms = batch_loss(model, batch, normalizer, losses, dens, corruption, coefficient)
        expected = {
            "energy": losses.energy_coefficient * official["energy"],
            "forces": losses.force_coefficient * official["force"],
            "dens": coefficient * official["denoising_pos"],
            "total": official["total"],
        }
    else:
        terms = batch_loss(model, batch, normalizer, losses, None, None, 0.0)
        expected = {
            "energy": losses.energy_coefficient * official["energy"],
            "forces": losses.force_coefficient * official["force"],
            "total": official["total"],
        }
    for key, value in expected.items():
        assert float(terms[key].detach()) == pytest.approx(value, rel=1e-6), key

    model.zero_grad()
    terms["total"].backward()
    grads = import_official_state_dict(ref[which]["grads"], model)
    worst = max(
        (relative(param.grad, grads[name]), name) for name, param in model.named_parameters()
    )
    assert worst[0] < 1e-5, worst


@pytest.mark.parametrize("which", ["dens", "baseline"])
def test_cutoff_crossing_matches_official(ref: dict, which: str) -> None:
    """A pair 1e-4 Å inside and outside the 5 Å cutoff: our energies and forces equal the
    official model's on both sides, including its jump (the official model has no smooth
    cutoff; see module notes). Eval mode, no force input (official evaluate())."""
    cut = ref["cutoff"]
    model = official_model(ref, which).eval()
    z = cut["structures"]["atomic_numbers"]
    energies = {}
    for side in ("inside", "outside"):
        pos = cut["structures"][f"pos_{side}"]
        data = Data(pos=pos, atomic_numbers=z, natoms=torch.tensor([len(z)]))
        out = model(Batch.from_data_list([data]))
        energies[side] = out["energy"]
        assert relative(out["energy"], cut[f"{which}.{side}.energy"]) < 1e-9
        assert relative(out["forces"], cut[f"{which}.{side}.forces"]) < 1e-8
    jump = float(energies["inside"] - energies["outside"])
    official = float(cut[f"{which}.inside.energy"] - cut[f"{which}.outside.energy"])
    assert abs(jump) > 1e-3  # discontinuous, as the official model
    assert jump == pytest.approx(official, rel=1e-6)
