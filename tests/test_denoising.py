"""Tests of the DeNS core (dens/denoising.py): corruption statistics, masks, the per-structure
and per-batch DeNS decisions, losses (Algorithm 2, the MD17 code's per-atom means, the official
OC trainer's free-atom mean), schedule."""

import math

import pytest
import torch

from dens.data.batch import Batch, Data
from dens.denoising import (
    Corruption,
    DeNSSettings,
    LossSettings,
    corrupt,
    dens_coefficient,
    dens_loss,
    force_encoding_input,
    per_atom_error,
)


def make_batch(
    num_structures: int,
    num_atoms: int,
    num_fixed: int = 0,
    md_every: int = 0,
    seed: int = 0,
) -> Batch:
    """Random structures of ``num_atoms`` atoms; the first ``num_fixed`` atoms of each are
    fixed; every ``md_every``-th structure (if > 0) comes from an MD split."""
    gen = torch.Generator().manual_seed(seed)
    structures = []
    for j in range(num_structures):
        fixed = torch.zeros(num_atoms, dtype=torch.bool)
        fixed[:num_fixed] = True
        structures.append(
            Data(
                pos=torch.randn(num_atoms, 3, generator=gen) * 3.0,
                atomic_numbers=torch.full((num_atoms,), 6, dtype=torch.long),
                natoms=torch.tensor([num_atoms]),
                energy=torch.randn(1, generator=gen),
                forces=torch.randn(num_atoms, 3, generator=gen),
                fixed=fixed,
                md_split=torch.tensor([md_every > 0 and j % md_every == 0]),
            )
        )
    return Batch.from_data_list(structures)


def settings(**overrides: object) -> DeNSSettings:
    values: dict[str, object] = {"p": 0.5, "sigma": 0.1, "corruption_ratio": 0.5, "coefficient": 5}
    values.update(overrides)
    return DeNSSettings(**values)  # type: ignore[arg-type]


def draw(batch: Batch, dens: DeNSSettings, seed: int = 1) -> Corruption:
    return corrupt(batch, dens, torch.Generator().manual_seed(seed), forces=batch.forces)


# ---------------------------------------------------------------- corruption statistics


@pytest.mark.parametrize("p", [0.125, 0.5, 0.8])
def test_fraction_of_dens_structures_close_to_p(p: float) -> None:
    batch = make_batch(4000, 3)
    fraction = draw(batch, settings(p=p)).dens_structures.float().mean().item()
    # binomial standard error <= 0.008; 0.03 is about 4 standard errors
    assert abs(fraction - p) < 0.03


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_corrupted_fraction_of_free_atoms_close_to_r(ratio: float) -> None:
    batch = make_batch(2000, 10, num_fixed=3)
    corruption = draw(batch, settings(p=1.0, corruption_ratio=ratio))
    free = ~batch.fixed
    fraction = corruption.corrupted[free].float().mean().item()
    # 14000 free atoms: standard error <= 0.0043
    assert abs(fraction - ratio) < 0.015


def test_noise_std_close_to_sigma() -> None:
    batch = make_batch(1000, 10)
    sigma = 0.05
    corruption = draw(batch, settings(p=1.0, sigma=sigma, corruption_ratio=0.5))
    noise = corruption.noise[corruption.corrupted]
    assert noise.shape[0] > 4000
    for axis in range(3):
        std = noise[:, axis].std().item()
        assert abs(std - sigma) < 0.04 * sigma
        assert abs(noise[:, axis].mean().item()) < 4 * sigma / math.sqrt(noise.shape[0])
    assert torch.allclose(corruption.noise_target * sigma, corruption.noise)


# --------------------------------------------------------------------- masks and inputs


def test_no_noise_and_no_force_input_on_fixed_uncorrupted_and_md_atoms() -> None:
    batch = make_batch(300, 6, num_fixed=2, md_every=3)
    corruption = draw(batch, settings(p=1.0, corruption_ratio=0.5))
    md_atoms = batch.md_split[batch.batch]
    dens_atoms = corruption.dens_structures[batch.batch]

    assert not corruption.dens_structures[batch.md_split].any()
    assert corruption.dens_structures[~batch.md_split].all()  # p = 1
    assert not (corruption.corrupted & batch.fixed).any()
    assert not (corruption.corrupted & md_atoms).any()
    assert not (corruption.corrupted & ~dens_atoms).any()
    assert corruption.corrupted.any() and not corruption.corrupted[dens_atoms & ~batch.fixed].all()

    clean = ~corruption.corrupted
    assert corruption.force_input is not None
    assert torch.equal(corruption.noise[clean], torch.zeros_like(corruption.noise[clean]))
    assert torch.equal(corruption.force_input[clean], torch.zeros_like(batch.forces[clean]))
    assert torch.equal(corruption.pos[clean], batch.pos[clean])
    hit = corruption.corrupted
    assert torch.equal(corruption.force_input[hit], batch.forces[hit])
    assert torch.equal(corruption.pos[hit], batch.pos[hit] + corruption.noise[hit])
    assert (corruption.noise[hit].abs() > 0).all()


def test_corrupt_leaves_the_batch_untouched() -> None:
    batch = make_batch(20, 5)
    pos, forces = batch.pos.clone(), batch.forces.clone()
    draw(batch, settings(p=1.0))
    assert torch.equal(batch.pos, pos) and torch.equal(batch.forces, forces)


def test_no_force_input_without_force_encoding() -> None:
    batch = make_batch(50, 5)
    dens = settings(p=1.0, force_encoding=False)
    corruption = corrupt(batch, dens, torch.Generator().manual_seed(3))
    assert corruption.force_input is None
    assert corruption.corrupted.any()
    with pytest.raises(ValueError, match="forces"):
        corrupt(batch, settings(p=1.0), torch.Generator().manual_seed(3))


def test_all_atoms_ablation_corrupts_every_free_atom_of_dens_structures() -> None:
    batch = make_batch(400, 7, num_fixed=2, md_every=5)
    corruption = draw(batch, settings(p=0.5, corruption_ratio=0.1, partial_corruption=False))
    expected = corruption.dens_structures[batch.batch] & ~batch.fixed
    assert 0 < int(corruption.dens_structures.sum()) < 400
    assert torch.equal(corruption.corrupted, expected)


def test_corruption_is_deterministic_for_a_seed() -> None:
    batch = make_batch(100, 6, num_fixed=1)
    first, second, other = (
        draw(batch, settings(), 7),
        draw(batch, settings(), 7),
        draw(batch, settings(), 8),
    )
    for name in ("dens_structures", "corrupted", "noise", "pos", "force_input"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert not torch.equal(first.noise, other.noise)
    # one seed picks the same DeNS structures whatever the ablation switches
    ablated = draw(batch, settings(partial_corruption=False, force_encoding=False), 7)
    assert torch.equal(first.dens_structures, ablated.dens_structures)


def test_corrupt_names_missing_batch_attributes() -> None:
    batch = make_batch(4, 3)
    del batch.md_split
    with pytest.raises(ValueError, match="md_split"):
        draw(batch, settings())


# ------------------------------------------------------------------------------- losses


def eq1_by_loops(prediction: dict, batch: Batch, energy_target, force_target, loss) -> float:
    """Eq. 1 averaged over the batch (Algorithm 2 lines 29-32, 35), written out per atom."""
    total = 0.0
    for j in range(batch.num_graphs):
        atoms = (batch.batch == j).nonzero().flatten().tolist()
        free = [i for i in atoms if not batch.fixed[i]]
        energy = abs(prediction["energy"][j].item() - energy_target[j].item())
        force = 0.0
        for i in free:
            diff = [prediction["forces"][i, k].item() - force_target[i, k].item() for k in range(3)]
            force += {
                "l2mae": math.sqrt(sum(d * d for d in diff)),
                "mse": sum(d * d for d in diff),
                "mae": sum(abs(d) for d in diff) / 3,
            }[loss.force_metric]
        total += loss.energy_coefficient * energy + loss.force_coefficient * force / len(free)
    return total / batch.num_graphs


@pytest.mark.parametrize("metric", ["l2mae", "mse", "mae"])
def test_total_loss_is_eq1_when_p_is_zero(metric: str) -> None:
    batch = make_batch(6, 5, num_fixed=2, md_every=4)
    gen = torch.Generator().manual_seed(11)
    prediction = {
        "energy": torch.randn(6, generator=gen),
        "forces": torch.randn(30, 3, generator=gen),
    }
    loss = LossSettings(energy_coefficient=2.0, force_coefficient=50.0, force_metric=metric)
    dens = settings(p=0.0)
    corruption = draw(batch, dens)
    assert not corruption.corrupted.any() and corruption.force_input is not None
    assert torch.equal(corruption.pos, batch.pos)
    assert not corruption.force_input.any()

    terms = dens_loss(prediction, batch, corruption, batch.energy, batch.forces, loss, dens, 5.0)
    reference = dens_loss(prediction, batch, None, batch.energy, batch.forces, loss, None, 0.0)
    for name in ("total", "energy", "forces", "dens"):
        assert torch.equal(terms[name], reference[name])
    assert terms["dens"].item() == 0.0
    expected = eq1_by_loops(prediction, batch, batch.energy, batch.forces, loss)
    assert terms["total"].item() == pytest.approx(expected, rel=1e-6)


def tiny_batch(md_split: tuple[bool, bool] = (False, False)) -> Batch:
    """S0: atoms 0, 1 and fixed atom 2; S1: atoms 3, 4. Labels are zero forces."""
    return Batch.from_data_list(
        [
            Data(
                pos=torch.zeros(n, 3),
                natoms=torch.tensor([n]),
                fixed=torch.tensor(fixed),
                md_split=torch.tensor([md]),
                forces=torch.zeros(n, 3),
            )
            for n, fixed, md in (
                (3, [False, False, True], md_split[0]),
                (2, [False, False], md_split[1]),
            )
        ]
    )


SIGMA = 0.5
ENERGY_TARGET = torch.tensor([1.0, -2.0])
# |E' - E_hat| = 0.5 for S0 and 1.0 for S1
ENERGY_PRED = torch.tensor([1.5, -1.0])
# force errors: atom 1 (3,4,0): l2 5, squared 25, mean-abs 7/3; atom 3 (0,0,2): 2, 4, 2/3;
# atom 4 (0,6,8): 10, 100, 14/3. Atom 0 is corrupted, atom 2 fixed: large values must not count.
FORCE_PRED = torch.tensor(
    [[10.0, 10.0, 10.0], [3.0, 4.0, 0.0], [100.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 6.0, 8.0]]
)


def tiny_corruption() -> Corruption:
    """S0 optimises DeNS with atom 0 corrupted by eps = (0.5, 0, 0), i.e. eps/sigma = (1, 0, 0)."""
    noise = torch.zeros(5, 3)
    noise[0, 0] = 0.5
    corrupted = torch.tensor([True, False, False, False, False])
    return Corruption(
        dens_structures=torch.tensor([True, False]),
        corrupted=corrupted,
        noise=noise,
        pos=noise.clone(),
        force_input=torch.zeros(5, 3),
        sigma=SIGMA,
    )


def tiny_prediction() -> dict[str, torch.Tensor]:
    noise_pred = torch.full((5, 3), 7.0)
    noise_pred[0] = torch.tensor([2.0, 2.0, 2.0])  # error (1, 2, 2): l2 3, squared 9, mean-abs 5/3
    return {"energy": ENERGY_PRED.clone(), "forces": FORCE_PRED.clone(), "noise": noise_pred}


# lambda_E = 2, lambda_F = 10, lambda_DeNS = 4, B = 2, free atoms |S_0| = |S_1| = 2.
# Default (l2mae forces, mse noise, Algorithm 2): energy (2*0.5 + 2*1)/2 = 1.5,
# forces (10*5/2 + 10*(2+10)/2)/2 = 42.5, dens (4*9/2)/2 = 9.
@pytest.mark.parametrize(
    ("loss_overrides", "dens_overrides", "expected"),
    [
        ({}, {}, (1.5, 42.5, 9.0)),
        ({}, {"force_encoding": False}, (1.5, 42.5, 9.0)),
        ({}, {"energy_loss": False}, (1.0, 42.5, 9.0)),
        ({"force_metric": "mse"}, {}, (1.5, (10 * 25 / 2 + 10 * 104 / 2) / 2, 9.0)),
        ({"force_metric": "mae"}, {}, (1.5, (10 * 7 / 3 / 2 + 10 * 16 / 3 / 2) / 2, 9.0)),
        ({"noise_metric": "l2mae"}, {}, (1.5, 42.5, 4 * 3 / 2 / 2)),
        ({"noise_metric": "mae"}, {}, (1.5, 42.5, 4 * 5 / 3 / 2 / 2)),
        ({"reduction": "atom"}, {}, (1.5, 10 * (5 + 2 + 10) / 3, 4 * 9 / 1)),
        ({"reduction": "atom"}, {"energy_loss": False}, (1.0, 10 * (5 + 2 + 10) / 3, 36.0)),
    ],
)
def test_hand_computed_loss(loss_overrides: dict, dens_overrides: dict, expected: tuple) -> None:
    loss = LossSettings(energy_coefficient=2.0, force_coefficient=10.0, **loss_overrides)
    dens = settings(sigma=SIGMA, coefficient=4.0, **dens_overrides)
    terms = dens_loss(
        tiny_prediction(),
        tiny_batch(),
        tiny_corruption(),
        ENERGY_TARGET,
        torch.zeros(5, 3),
        loss,
        dens,
        4.0,
    )
    energy, forces, dens_term = expected
    assert terms["energy"].item() == pytest.approx(energy, rel=1e-6)
    assert terms["forces"].item() == pytest.approx(forces, rel=1e-6)
    assert terms["dens"].item() == pytest.approx(dens_term, rel=1e-6)
    assert terms["total"].item() == pytest.approx(energy + forces + dens_term, rel=1e-6)


@pytest.mark.parametrize(("energy_loss", "energy"), [(True, 1.5), (False, 1.0)])
def test_hand_computed_loss_all_atoms_ablation(energy_loss: bool, energy: float) -> None:
    """S1 is from an MD split, so with p = 1 only S0 is a DeNS structure, and without partial
    corruption both its free atoms (0 and 1) are corrupted."""
    batch = tiny_batch(md_split=(False, True))
    dens = settings(
        p=1.0, sigma=SIGMA, coefficient=4.0, partial_corruption=False, energy_loss=energy_loss
    )
    corruption = corrupt(batch, dens, torch.Generator().manual_seed(5), forces=batch.forces)
    assert corruption.corrupted.tolist() == [True, True, False, False, False]
    prediction = tiny_prediction()
    offsets = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 1.0]])  # squared errors 9 and 1
    prediction["noise"][:2] = corruption.noise_target[:2] + offsets
    loss = LossSettings(energy_coefficient=2.0, force_coefficient=10.0)
    terms = dens_loss(
        prediction, batch, corruption, ENERGY_TARGET, torch.zeros(5, 3), loss, dens, 4.0
    )
    # forces: only S1, 10*(2+10)/2 / B; dens: 4*(9+1)/|S_0| / B
    assert terms["energy"].item() == pytest.approx(energy, rel=1e-6)
    assert terms["forces"].item() == pytest.approx(30.0, rel=1e-6)
    assert terms["dens"].item() == pytest.approx(10.0, rel=1e-5)


@pytest.mark.parametrize("energy_loss", [True, False])
def test_dens_structure_without_corrupted_atom_is_eq1(energy_loss: bool) -> None:
    corruption = tiny_corruption()
    empty = Corruption(
        dens_structures=corruption.dens_structures,
        corrupted=torch.zeros(5, dtype=torch.bool),
        noise=torch.zeros(5, 3),
        pos=torch.zeros(5, 3),
        force_input=torch.zeros(5, 3),
        sigma=SIGMA,
    )
    loss = LossSettings(energy_coefficient=2.0, force_coefficient=10.0)
    dens = settings(sigma=SIGMA, energy_loss=energy_loss)
    prediction = tiny_prediction()
    del prediction["noise"]
    batch = tiny_batch()
    terms = dens_loss(prediction, batch, empty, ENERGY_TARGET, torch.zeros(5, 3), loss, dens, 4.0)
    reference = dens_loss(prediction, batch, None, ENERGY_TARGET, torch.zeros(5, 3), loss, None, 0)
    assert torch.equal(terms["total"], reference["total"])
    # S0 counts atoms 0 and 1 now: (10*(sqrt(300)+5)/2 + 60)/2
    assert terms["forces"].item() == pytest.approx((5 * (math.sqrt(300) + 5) + 60) / 2, rel=1e-6)


def test_loss_gradients_follow_the_masks() -> None:
    prediction = {k: v.requires_grad_() for k, v in tiny_prediction().items()}
    loss = LossSettings(energy_coefficient=2.0, force_coefficient=10.0)
    terms = dens_loss(
        prediction,
        tiny_batch(),
        tiny_corruption(),
        ENERGY_TARGET,
        torch.zeros(5, 3),
        loss,
        settings(),
        4.0,
    )
    terms["total"].backward()
    force_grad = prediction["forces"].grad.abs().sum(dim=-1)
    noise_grad = prediction["noise"].grad.abs().sum(dim=-1)
    assert (force_grad > 0).tolist() == [False, True, False, True, True]
    assert (noise_grad > 0).tolist() == [True, False, False, False, False]
    assert (prediction["energy"].grad.abs() > 0).all()


def test_loss_needs_noise_prediction_for_corrupted_atoms() -> None:
    prediction = tiny_prediction()
    del prediction["noise"]
    loss = LossSettings(energy_coefficient=1.0, force_coefficient=1.0)
    args = (prediction, tiny_batch(), tiny_corruption(), ENERGY_TARGET, torch.zeros(5, 3), loss)
    with pytest.raises(ValueError, match="predict_noise"):
        dens_loss(*args, settings(), 4.0)
    # lambda_DeNS = 0 (end of a linear decay): no noise needed, no denoising term
    assert dens_loss(*args, settings(), 0.0)["dens"].item() == 0.0


def test_loss_rejects_wrong_shapes() -> None:
    loss = LossSettings(energy_coefficient=1.0, force_coefficient=1.0)
    prediction = tiny_prediction()
    prediction["energy"] = prediction["energy"].unsqueeze(-1)
    with pytest.raises(ValueError, match=r'prediction\["energy"\]'):
        dens_loss(
            prediction, tiny_batch(), None, ENERGY_TARGET, torch.zeros(5, 3), loss, settings(), 1.0
        )


def test_per_atom_error_metrics() -> None:
    pred, target = torch.tensor([[3.0, -4.0, 0.0]]), torch.zeros(1, 3)
    assert per_atom_error(pred, target, "l2mae").tolist() == [5.0]
    assert per_atom_error(pred, target, "mse").tolist() == [25.0]
    assert per_atom_error(pred, target, "mae").tolist() == pytest.approx([7 / 3])


# ------------------------------------------------------------------- schedule, settings


def test_linear_decay_per_epoch_as_the_official_md17_code() -> None:
    """coefficient * (1 - epoch / epochs), 0-based epoch, constant within an epoch."""
    dens = settings(coefficient=5.0, coefficient_decay="linear")
    assert dens_coefficient(dens, 0, 100) == 5.0
    assert dens_coefficient(dens, 50, 100) == pytest.approx(2.5)
    assert dens_coefficient(dens, 99, 100) == pytest.approx(0.05)
    values = [dens_coefficient(dens, e, 100) for e in range(100)]
    assert all(a > b > 0 for a, b in zip(values, values[1:], strict=False))
    constant = settings(coefficient=5.0)
    assert {dens_coefficient(constant, e, 100) for e in range(100)} == {5.0}
    with pytest.raises(ValueError, match="epoch"):
        dens_coefficient(dens, 100, 100)


def test_force_encoding_input_units() -> None:
    forces = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    assert torch.equal(force_encoding_input(forces, 4.0, "normalized"), forces / 4.0)
    assert torch.equal(force_encoding_input(forces, 4.0, "eV/Å"), forces)
    kcal = force_encoding_input(forces, 4.0, "kcal/mol/Å")
    assert torch.allclose(kcal, forces * 23.0605, rtol=1e-4)
    with pytest.raises(ValueError, match="force_encoding_units"):
        settings(force_encoding_units="kcal")


def test_settings_from_config_entry() -> None:
    entry = {
        "p": 0.25,
        "sigma": 0.05,
        "corruption_ratio": 0.25,
        "coefficient": 5,
        "coefficient_decay": "linear",
        "force_encoding": False,
        "energy_loss": True,
        "partial_corruption": True,
        "force_encoding_units": "kcal/mol/Å",
        "decision": "batch",
    }
    assert DeNSSettings.from_config(entry) == DeNSSettings(**entry)
    with pytest.raises(ValueError, match="unknown key"):
        DeNSSettings.from_config({**entry, "sigmaa": 0.1})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("p", -0.1),
        ("p", 1.5),
        ("p", float("nan")),
        ("sigma", 0.0),
        ("sigma", -0.1),
        ("corruption_ratio", 0.0),
        ("corruption_ratio", 1.01),
        ("coefficient", -1.0),
        ("coefficient", "5"),
        ("force_encoding", "yes"),
        ("energy_loss", 1),
        ("partial_corruption", None),
        ("coefficient_decay", "cosine"),
        ("decision", "atom"),
    ],
)
def test_settings_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field) as error:
        settings(**{field: value})
    assert repr(value) in str(error.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("energy_coefficient", -1.0),
        ("force_coefficient", float("inf")),
        ("force_metric", "huber"),
        ("noise_metric", "l1"),
        ("reduction", "batch"),
    ],
)
def test_loss_settings_validation_names_the_field(field: str, value: object) -> None:
    values: dict[str, object] = {"energy_coefficient": 1.0, "force_coefficient": 100.0}
    values[field] = value
    with pytest.raises(ValueError, match=field):
        LossSettings(**values)  # type: ignore[arg-type]


# ------------------------------------------- the official OC20/OC22 trainer: decision, reduction


def oc_batch() -> Batch:
    """S0 (a DeNS structure): atom 0 corrupted, atom 1 free, atoms 2 and 3 fixed; S1 (MD
    split): free atoms 4, 5, 6. Zero force labels; 5 free atoms in all."""
    return Batch.from_data_list(
        [
            Data(
                pos=torch.zeros(n, 3),
                natoms=torch.tensor([n]),
                fixed=torch.tensor(fixed),
                md_split=torch.tensor([md]),
                forces=torch.zeros(n, 3),
            )
            for n, fixed, md in ((4, [False, False, True, True], False), (3, [False] * 3, True))
        ]
    )


def oc_corruption(dens_structures: tuple[bool, bool] = (True, False)) -> Corruption:
    noise = torch.zeros(7, 3)
    noise[0, 0] = 0.5  # eps / sigma = (1, 0, 0)
    return Corruption(
        dens_structures=torch.tensor(dens_structures),
        corrupted=torch.tensor([True] + [False] * 6),
        noise=noise,
        pos=noise.clone(),
        force_input=torch.zeros(7, 3),
        sigma=SIGMA,
    )


def oc_prediction() -> dict[str, torch.Tensor]:
    """Force errors (l2): atom 1: 5, atom 4: 2, atom 5: 10, atom 6: 1; atom 0 (corrupted) and
    the fixed atoms 2, 3 are large and must not count. Noise error of atom 0 (l2): 3."""
    forces = torch.tensor(
        [[10.0, 10.0, 10.0], [3.0, 4.0, 0.0], [100.0, 0, 0], [0, 100.0, 0]]
        + [[0.0, 0.0, 2.0], [0.0, 6.0, 8.0], [1.0, 0.0, 0.0]]
    )
    noise = torch.full((7, 3), 50.0)
    noise[0] = torch.tensor([2.0, 2.0, 2.0])
    return {"energy": ENERGY_PRED.clone(), "forces": forces, "noise": noise}


def official_hybrid_loss(prediction, force_target, corruption, free, force_mult, dens_mult):
    """The official hybrid loss written out: the per-atom L2 error of one target that is the
    noise target on masked atoms and the force target elsewhere, weighted by the two
    coefficients, averaged over the free atoms (denoising_forces_trainer.py:204-217)."""
    mask = corruption.corrupted.unsqueeze(-1)
    target = torch.where(mask, corruption.noise_target, force_target)
    output = torch.where(mask, prediction["noise"], prediction["forces"])
    error = torch.linalg.vector_norm(output - target, dim=-1)
    weight = torch.where(corruption.corrupted, dens_mult, force_mult)
    return (weight * error)[free].mean()


# lambda_E = 2, lambda_F = 10, lambda_DeNS = 4, l2mae forces and noise:
# free_atoms: forces 10 * (5 + 2 + 10 + 1) / 5 = 36, dens 4 * 3 / 5 = 2.4;
# structure: forces (10 * 5 / 2 + 10 * 13 / 3) / 2, dens 4 * 3 / 2 / 2 = 3; atom: 45 and 12.
@pytest.mark.parametrize(
    ("reduction", "forces", "dens_term"),
    [
        ("free_atoms", 36.0, 2.4),
        ("structure", (25.0 + 130.0 / 3.0) / 2.0, 3.0),
        ("atom", 45.0, 12.0),
    ],
)
def test_free_atom_mean_of_the_official_oc_trainer(reduction, forces, dens_term) -> None:
    """One mean over the free atoms of the batch for the force and the noise terms together
    (fixed atoms out, corrupted atoms with the noise target, the MD structure's atoms with the
    force target); the old reductions weigh these atoms differently."""
    loss = LossSettings(2.0, 10.0, noise_metric="l2mae", reduction=reduction)
    dens = settings(sigma=SIGMA, coefficient=4.0)
    batch = oc_batch()
    terms = dens_loss(
        oc_prediction(), batch, oc_corruption(), ENERGY_TARGET, torch.zeros(7, 3), loss, dens, 4.0
    )
    assert terms["energy"].item() == pytest.approx(1.5, rel=1e-6)
    assert terms["forces"].item() == pytest.approx(forces, rel=1e-6)
    assert terms["dens"].item() == pytest.approx(dens_term, rel=1e-6)
    if reduction == "free_atoms":
        official = official_hybrid_loss(
            oc_prediction(), torch.zeros(7, 3), oc_corruption(), ~batch.fixed, 10.0, 4.0
        )
        assert (terms["forces"] + terms["dens"]).item() == pytest.approx(official.item(), rel=1e-6)


def test_free_atom_mean_across_processes_uses_the_global_count_except_in_hybrid_batches() -> None:
    """free_atoms_per_process (the global batch's free atoms / processes, fairchem DDPLoss)
    divides the plain terms (no DeNS; DeNS without partial corruption) but not a DeNS batch with
    partial corruption (the official hybrid loss: each process's own mean)."""
    loss = LossSettings(2.0, 10.0, noise_metric="l2mae", reduction="free_atoms")
    batch, prediction, zero = oc_batch(), oc_prediction(), torch.zeros(7, 3)
    plain = dens_loss(prediction, batch, None, ENERGY_TARGET, zero, loss, None, 0.0, 7.5)
    assert plain["forces"].item() == pytest.approx(10 * (math.sqrt(300) + 18) / 7.5, rel=1e-6)
    hybrid = dens_loss(
        prediction, batch, oc_corruption(), ENERGY_TARGET, zero, loss, settings(), 4.0, 7.5
    )
    assert hybrid["forces"].item() == pytest.approx(36.0, rel=1e-6)
    corrupt_all = settings(partial_corruption=False)
    terms = dens_loss(
        prediction, batch, oc_corruption(), ENERGY_TARGET, zero, loss, corrupt_all, 4.0, 7.5
    )
    assert terms["forces"].item() == pytest.approx(10 * 18 / 7.5, rel=1e-6)
    assert terms["dens"].item() == pytest.approx(4 * 3 / 7.5, rel=1e-6)
    no_dens = dens_loss(
        prediction,
        batch,
        oc_corruption((False, False)),
        ENERGY_TARGET,
        zero,
        loss,
        settings(),
        4.0,
        7.5,
    )
    assert no_dens["forces"].item() == pytest.approx(10 * 18 / 7.5, rel=1e-6)


def two_ranks(seed: int, p: float = 0.5, **overrides: object) -> list[tuple[Batch, Corruption]]:
    """Two simulated processes: their own batches and corruption generators (seeded from the
    rank), one decision generator seeded alike."""
    dens = settings(p=p, decision="batch", **overrides)
    out = []
    for rank in range(2):
        batch = make_batch(6, 8, num_fixed=3, md_every=3, seed=10 * seed + rank)
        corruption = corrupt(
            batch,
            dens,
            torch.Generator().manual_seed(1000 * seed + rank),
            forces=batch.forces,
            batch_generator=torch.Generator().manual_seed(seed),
        )
        out.append((batch, corruption))
    return out


def test_batch_decision_is_all_or_nothing_and_equal_on_every_process() -> None:
    """dens.decision "batch" (the official OC trainer): one draw for the whole global batch,
    the same on every process; per-atom masks and noise stay per process; MD structures are
    never corrupted. The per-structure decision (the old and default one) mixes."""
    decisions = []
    for seed in range(200):
        (batch_a, a), (batch_b, b) = two_ranks(seed)
        assert a.dens_structures.all() or not a.dens_structures.any()
        assert torch.equal(a.dens_structures, b.dens_structures)
        decisions.append(bool(a.dens_structures[0]))
        for batch, corruption in ((batch_a, a), (batch_b, b)):
            assert not corruption.corrupted[batch.md_split[batch.batch]].any()
            assert not (corruption.corrupted & batch.fixed).any()
        if decisions[-1]:
            assert not torch.equal(a.corrupted, b.corrupted)
    assert 70 < sum(decisions) < 130  # p = 0.5; 200 draws: 4 standard errors is about 28
    mixed = draw(make_batch(200, 4), settings(p=0.5)).dens_structures
    assert 0 < int(mixed.sum()) < 200
    with pytest.raises(ValueError, match="batch_generator"):
        draw(make_batch(2, 4), settings(decision="batch"))


@pytest.mark.parametrize("partial", [True, False])
def test_batch_decision_encodes_the_forces_of_fixed_atoms_in_the_mask(partial: bool) -> None:
    """The official mask is drawn over all atoms: a fixed atom it selects gets its force
    encoded (no noise, no loss); MD structures' atoms get nothing; without partial corruption
    every atom of a non-MD structure is encoded."""
    (batch, corruption), _ = two_ranks(3, p=1.0, partial_corruption=partial)
    md_atoms = batch.md_split[batch.batch]
    encoded = corruption.force_input.abs().sum(dim=-1) > 0
    assert not encoded[md_atoms].any()
    assert torch.equal(encoded & ~batch.fixed, corruption.corrupted)
    fixed_encoded = encoded & batch.fixed
    if partial:
        assert fixed_encoded.any() and not fixed_encoded[batch.fixed & ~md_atoms].all()
    else:
        assert torch.equal(encoded, ~md_atoms)
    assert not corruption.noise[batch.fixed].any()
    assert torch.equal(corruption.pos[batch.fixed], batch.pos[batch.fixed])


def test_batch_decision_without_energy_loss_drops_every_structure_of_the_dens_batch() -> None:
    """The official model zeroes the energy of the whole DeNS batch (use_denoising_energy
    False); per structure, only structures with a corrupted atom lose their energy term."""
    loss = LossSettings(2.0, 10.0, noise_metric="l2mae", reduction="free_atoms")
    batch, zero = oc_batch(), torch.zeros(7, 3)
    per_batch = settings(energy_loss=False, decision="batch")
    terms = dens_loss(
        oc_prediction(),
        batch,
        oc_corruption((True, True)),
        ENERGY_TARGET,
        zero,
        loss,
        per_batch,
        4.0,
    )
    assert terms["energy"].item() == 0.0
    per_structure = settings(energy_loss=False)
    terms = dens_loss(
        oc_prediction(), batch, oc_corruption(), ENERGY_TARGET, zero, loss, per_structure, 4.0
    )
    assert terms["energy"].item() == pytest.approx(2.0 * 1.0 / 2, rel=1e-6)  # S1 kept


def test_a_corruption_without_its_settings_is_refused() -> None:
    loss = LossSettings(2.0, 10.0)
    batch, prediction, zero = oc_batch(), oc_prediction(), torch.zeros(7, 3)
    with pytest.raises(ValueError, match=r"a corruption needs the DeNS settings \(dens\)"):
        dens_loss(prediction, batch, oc_corruption(), ENERGY_TARGET, zero, loss, None, 4.0)
