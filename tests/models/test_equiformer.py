"""The Equiformer model (dens/models/equiformer/) and its building blocks, what only this family
has: its blocks on per-degree lists, the Table 5 variants, forces as -dE/dx, the force encoding of
Algorithm 1, dropout. The contract of every family (equivariance of every head, DeNS switches,
presets and parameter counts) is tests/models/test_model_contract.py."""

from __future__ import annotations

import math

import pytest
import torch
from e3nn import o3
from model_cases import FAMILY_CASES

from dens.data.batch import Batch, Data
from dens.errors import ConfigError, NotAvailableError
from dens.models.equiformer import Equiformer, EquiformerSettings
from dens.models.equiformer.depthwise_tensor_product import DepthwiseTensorProduct
from dens.models.equiformer.equivariant_layer_norm import EquivariantLayerNorm
from dens.models.equiformer.network import ForceEncoding
from dens.models.equiformer.radial_basis import radial_basis
from dens.models.equiformer.so3_features import format_irreps, from_e3nn, parse_irreps
from dens.models.equiformer.so3_linear import SO3Linear
from dens.pipeline.registry import load_registry

SMALL_L2 = FAMILY_CASES["equiformer"].tiny
SMALL_L3 = dict(
    SMALL_L2,
    irreps_node_embedding="8x0e+4x1e+2x2e+2x3e",
    irreps_feature_dens="16x0e+4x1e+2x2e+2x3e",
    irreps_head="4x0e+2x1e+1x2e+1x3e",
    irreps_mlp_mid="16x0e+8x1e+4x2e+4x3e",
)
SMALL = {"l2": SMALL_L2, "l3": SMALL_L3}
VARIANTS = [  # (attention, layer_norm)
    (True, True),
    (False, True),
    (True, False),
    (False, False),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny float64 matmuls are dominated by OpenMP synchronisation when the (shared) CPU is
    busy; one intra-op thread keeps this file fast. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batch(
    sizes: tuple[int, ...] = (6, 5), box: float = 4.0, seed: int = 0, dtype=torch.float64
) -> Batch:
    """Random structures (atoms in a cube of side ``box`` Å, H/C/N/O), labels random."""
    gen = torch.Generator().manual_seed(seed)
    data = []
    for n in sizes:
        z = torch.tensor([1, 6, 7, 8])[torch.randint(0, 4, (n,), generator=gen)]
        data.append(
            Data(
                pos=(box * torch.rand(n, 3, generator=gen)).to(dtype),
                atomic_numbers=z,
                natoms=torch.tensor([n]),
            )
        )
    return Batch.from_data_list(data)


def transformed(batch: Batch, rot: torch.Tensor, shift: torch.Tensor) -> Batch:
    out = batch.clone()
    out.pos = batch.pos @ rot.T + shift
    return out


def random_rotation(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return o3.rand_matrix(dtype=torch.float64)


def equivariance_errors(model: Equiformer, batch: Batch, seed: int = 1) -> dict[str, float]:
    """Max |out(R x + t) - R out(x)| for energy, forces and (dens) noise, force input rotated."""
    rot = random_rotation(seed)
    shift = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    force_input = None
    if model.force_encoding is not None:
        force_input = torch.randn(batch.num_nodes, 3, generator=gen, dtype=torch.float64)
        force_input[::3] = 0.0  # atoms without encoding
    kwargs = dict(predict_noise=model.noise_head is not None)
    out = model(batch, force_input=force_input, **kwargs)
    out_rot = model(
        transformed(batch, rot, shift),
        force_input=None if force_input is None else force_input @ rot.T,
        **kwargs,
    )
    errors = {
        "energy": (out_rot["energy"] - out["energy"]).abs().max().item(),
        "forces": (out_rot["forces"] - out["forces"] @ rot.T).abs().max().item(),
    }
    if model.noise_head is not None:
        errors["noise"] = (out_rot["noise"] - out["noise"] @ rot.T).abs().max().item()
    return errors


DENS = {"force_encoding": True, "noise_head": True}


def equiformer_preset(name: str) -> dict:
    """A preset of config/models.yaml, read through the registry."""
    return load_registry({"scale": "paper"}).preset("equiformer", name)


def small_model(lmax: str = "l2", seed: int = 0, **kwargs) -> Equiformer:
    torch.manual_seed(seed)
    return Equiformer(EquiformerSettings(**{**SMALL[lmax], **kwargs})).double().eval()


# ---------------------------------------------------------------- building blocks


def test_parse_irreps() -> None:
    assert parse_irreps("128x0e+64x1e+32x2e") == (128, 64, 32)
    assert parse_irreps("4x0e+2x2e+1x0e") == (5, 0, 2)
    assert format_irreps((5, 0, 2)) == "5x0e+2x2e"
    with pytest.raises(ValueError, match="odd parity"):
        parse_irreps("4x0e+2x1o")
    with pytest.raises(ValueError, match="invalid irreps"):
        parse_irreps("four scalars")


@pytest.mark.parametrize("internal", [False, True])
def test_depthwise_tensor_product_matches_e3nn(internal: bool) -> None:
    """Same numbers as e3nn's 'uvu' TensorProduct with path_normalization='none' (the
    official separable FCTP), per path."""
    torch.manual_seed(0)
    channels, lmax_sh, n_edges = (3, 2, 2), 2, 7
    dtp = DepthwiseTensorProduct(channels, lmax_sh, (4, 3, 2), "normal" if internal else None)
    dtp.double()
    irreps_in = o3.Irreps(format_irreps(channels))
    irreps_sh = o3.Irreps.spherical_harmonics(lmax_sh, p=1)
    irreps_out, instructions, keys = [], [], []
    for i, (mul, ir) in enumerate(irreps_in):
        for j, (_, ir_sh) in enumerate(irreps_sh):
            for lo in range(abs(ir.l - ir_sh.l), min(ir.l + ir_sh.l, 2) + 1):
                instructions.append((i, j, len(irreps_out), "uvu", True))
                irreps_out.append((mul, (lo, 1)))
                keys.append((ir.l, ir_sh.l, lo))
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn stores its Wigner 3j in the default dtype
    try:
        tp = o3.TensorProduct(
            irreps_in,
            irreps_sh,
            o3.Irreps(irreps_out),
            instructions,
            internal_weights=False,
            shared_weights=False,
            path_normalization="none",
        )
    finally:
        torch.set_default_dtype(default_dtype)
    x = irreps_in.randn(n_edges, -1, dtype=torch.float64)
    sh = o3.spherical_harmonics(
        list(range(lmax_sh + 1)), torch.randn(n_edges, 3, dtype=torch.float64), True, "component"
    )
    w_tp = torch.randn(n_edges, tp.weight_numel, dtype=torch.float64)
    starts = [0]
    for mul, _ in irreps_out:
        starts.append(starts[-1] + mul)
    order = sorted(range(len(keys)), key=lambda i: (keys[i][0], keys[i][2], keys[i][1]))
    w_ours = torch.cat([w_tp[:, starts[i] : starts[i + 1]] for i in order], dim=1)
    if internal:
        w_tp = w_tp[:1].expand(n_edges, -1)
        with torch.no_grad():
            dtp.weight.copy_(w_ours[0])
        ours = dtp(from_e3nn(x, channels), sh)
    else:
        ours = dtp(from_e3nn(x, channels), sh, w_ours)
    ref = tp(x, sh, w_tp)
    slices = tp.irreps_out.slices()
    for lo in range(3):
        expected = torch.cat(
            [
                ref[:, slices[keys.index((l1, l2, lo))]]
                .reshape(n_edges, -1, 2 * lo + 1)
                .transpose(1, 2)
                for l1, l2 in dtp.paths[lo]
            ],
            dim=2,
        )
        torch.testing.assert_close(torch.cat(ours[lo], dim=2), expected, rtol=1e-12, atol=1e-12)


def rotate_feature(x: list[torch.Tensor], rot: torch.Tensor) -> list[torch.Tensor]:
    return [o3.Irrep(deg, 1).D_from_matrix(rot) @ xl for deg, xl in enumerate(x)]


def test_linear_and_layer_norm_are_equivariant() -> None:
    torch.manual_seed(0)
    channels = (5, 3, 2, 2)
    x = [torch.randn(11, 2 * deg + 1, c, dtype=torch.float64) for deg, c in enumerate(channels)]
    rot = random_rotation(3)
    for layer in (SO3Linear(channels, (4, 2, 3, 1)), EquivariantLayerNorm(channels)):
        layer.double()
        for a, b in zip(layer(rotate_feature(x, rot)), rotate_feature(layer(x), rot), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_layer_norm_normalises_each_degree() -> None:
    torch.manual_seed(0)
    x = [3.0 * torch.randn(6, 2 * deg + 1, c) + 1.0 for deg, c in enumerate((8, 4, 2))]
    y = EquivariantLayerNorm((8, 4, 2), eps=0.0)(x)
    torch.testing.assert_close(y[0].mean(-1), torch.zeros(6, 1), atol=1e-5, rtol=0)
    for yl in y:
        torch.testing.assert_close(yl.pow(2).mean((-2, -1)), torch.ones(6), atol=1e-5, rtol=0)


@pytest.mark.parametrize("basis_type", ["exp", "gaussian", "bessel"])
def test_radial_basis_is_finite_and_vanishes_at_cutoff(basis_type: str) -> None:
    basis = radial_basis(basis_type, 32, 5.0)
    d = torch.linspace(0.3, 5.0, 50)
    phi = basis(d)
    assert phi.shape == (50, 32)
    assert torch.isfinite(phi).all()
    if basis_type != "gaussian":  # the Gaussian basis has no cutoff function (official)
        assert phi[-1].abs().max() < 1e-6
        assert phi[0].abs().max() > 1e-2


def test_force_encoding_zero_rows_and_gradients() -> None:
    """Algorithm 1: type-1 part of ||f|| Y(f/||f||) is f; a zero row gives the type-0 bias only
    (official LinearRS force_embed, nets/equiformer_md17_dens.py:134) and finite gradients."""
    torch.manual_seed(0)
    enc = ForceEncoding((3, 2, 2), "normal").double()
    with torch.no_grad():
        enc.linear.bias.normal_()
    f = torch.randn(5, 3, dtype=torch.float64)
    f[1] = 0.0
    f.requires_grad_(True)
    out = enc(f)
    assert torch.equal(out[0][1, 0], enc.linear.bias)
    for xl in out[1:]:
        assert torch.equal(xl[1], torch.zeros_like(xl[1]))
        assert xl[0].abs().max() > 0
    sum(xl.pow(2).sum() for xl in out).backward()
    assert torch.isfinite(f.grad).all()
    with torch.no_grad():
        expected = f[:, None, :].transpose(1, 2) @ enc.linear.weight["1"]  # [N, 3, C_1]
    torch.testing.assert_close(out[1], expected)


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("lmax", ["l2", "l3"])
@pytest.mark.parametrize(("attention", "layer_norm"), VARIANTS)
def test_equivariance_of_the_table5_variants(lmax: str, attention: bool, layer_norm: bool) -> None:
    """Energy invariant, forces and noise rotate with R, under x -> R x + t (float64), with and
    without attention and layer norm (DeNS Table 5), Lmax 2 and 3, DeNS modules on (the
    contract checks every head of the default l2 model with and without them)."""
    model = small_model(lmax, **DENS, attention=attention, layer_norm=layer_norm)
    errors = equivariance_errors(model, make_batch())
    for key, err in errors.items():
        assert err < 1e-10, (key, err)


@pytest.mark.parametrize("basis_type", ["gaussian", "bessel"])
def test_equivariance_other_radial_bases(basis_type: str) -> None:
    model = small_model(**DENS, basis_type=basis_type)
    for key, err in equivariance_errors(model, make_batch()).items():
        assert err < 1e-10, (key, err)


def test_uniform_weight_init() -> None:
    """DeNS App. D.2: uniform initialisation (used without attention and layer norm)."""
    model = small_model(**DENS, attention=False, layer_norm=False, weight_init="uniform")
    w = model.blocks[0].ffn.linear_1.weight["0"]
    assert w.abs().max() <= 1.0 / math.sqrt(w.shape[0])
    assert model.blocks[0].attn.dtp_value.weight.abs().max() <= 1.0
    for key, err in equivariance_errors(model, make_batch()).items():
        assert err < 1e-10, (key, err)
    with pytest.raises(ValueError, match="weight_init"):
        EquiformerSettings(**SMALL_L2, weight_init="xavier")


def test_equivariance_paper_preset_l2_dens() -> None:
    torch.manual_seed(0)
    model = Equiformer(EquiformerSettings(**equiformer_preset("l2"), **DENS)).double().eval()
    errors = equivariance_errors(model, make_batch((5, 4)))
    for key, err in errors.items():
        assert err < 1e-9, (key, err)


def test_forces_are_minus_energy_gradient() -> None:
    """Central finite differences of the energy (float64) give the predicted forces."""
    model = small_model(**DENS)
    batch = make_batch()
    force_input = torch.randn(batch.num_nodes, 3, dtype=torch.float64)
    forces = model(batch, force_input=force_input)["forces"]
    h = 1e-5
    for atom, axis in [(0, 0), (3, 1), (7, 2), (10, 0)]:
        energies = []
        for sign in (1.0, -1.0):
            moved = batch.clone()
            moved.pos = batch.pos.clone()
            moved.pos[atom, axis] += sign * h
            energies.append(model(moved, force_input=force_input)["energy"].sum())
        fd = -(energies[0] - energies[1]) / (2 * h)
        assert abs(fd.item() - forces[atom, axis].item()) < 1e-7


def test_zero_force_input_equals_no_force_input() -> None:
    """Without force input the encoding of zero forces (its bias) is still added, in training
    and evaluation alike, as the official model (nets/equiformer_md17_dens.py:287-294)."""
    model = small_model(**DENS)
    batch = make_batch()
    zeros = torch.zeros(batch.num_nodes, 3, dtype=torch.float64)
    before = model(batch)["energy"]
    with torch.no_grad():
        model.force_encoding.linear.bias.normal_()
    without = model(batch)
    assert not torch.allclose(without["energy"], before)
    with_zeros = model(batch, force_input=zeros)
    assert torch.equal(without["energy"], with_zeros["energy"])
    assert torch.equal(without["forces"], with_zeros["forces"])
    some = zeros.clone()
    some[2] = torch.tensor([0.3, -0.2, 0.5])
    assert not torch.allclose(model(batch, force_input=some)["energy"], without["energy"])


def test_dropout_and_drop_path_only_in_training() -> None:
    model = small_model(**DENS, alpha_drop=0.3, proj_drop=0.3, out_drop=0.3, drop_path_rate=0.3)
    batch = make_batch()
    first = model(batch, predict_noise=True)
    second = model(batch, predict_noise=True)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    model.train()
    torch.manual_seed(1)
    a = model(batch, predict_noise=True)
    torch.manual_seed(2)
    b = model(batch, predict_noise=True)
    assert not torch.allclose(a["energy"], b["energy"])


def test_training_mode_builds_graph_through_forces() -> None:
    model = small_model(**DENS).train()
    batch = make_batch()
    out = model(batch, force_input=torch.zeros(batch.num_nodes, 3, dtype=torch.float64))
    assert out["forces"].requires_grad
    out["forces"].pow(2).sum().backward()
    grads = [p.grad for p in model.blocks[0].parameters() if p.grad is not None]
    assert grads and any(g.abs().max() > 0 for g in grads)
    model.eval()
    assert not model(batch)["forces"].requires_grad
    with torch.no_grad():
        out = model(batch, predict_noise=True)
    assert not out["energy"].requires_grad and out["noise"].shape == (batch.num_nodes, 3)
    assert model.gradient_forces is True


def test_output_shapes_float32() -> None:
    torch.manual_seed(0)
    model = Equiformer(EquiformerSettings(**SMALL_L2, **DENS)).eval()
    batch = make_batch(dtype=torch.float32)
    out = model(batch, force_input=torch.randn(batch.num_nodes, 3), predict_noise=True)
    assert out["energy"].shape == (2,) and out["energy"].dtype == torch.float32
    assert out["forces"].shape == (batch.num_nodes, 3)
    assert out["noise"].shape == (batch.num_nodes, 3)


def test_invalid_inputs_are_named() -> None:
    """Beyond the DeNS inputs (the contract): atom types, parity, periodic cells, presets."""
    model = small_model()
    batch = make_batch()
    bad = batch.clone()
    bad.atomic_numbers = bad.atomic_numbers.clone()
    bad.atomic_numbers[0] = 80
    with pytest.raises(ValueError, match="atomic_numbers"):
        model(bad)
    with pytest.raises(ValueError, match="odd parity"):
        EquiformerSettings(**{**SMALL_L2, "irreps_node_embedding": "8x0e+4x1o"})
    periodic = batch.clone()
    periodic.pbc = torch.tensor([[True, True, False]] * 2)
    with pytest.raises(NotAvailableError, match="periodic"):
        model(periodic)
    with pytest.raises(ConfigError, match="unknown equiformer preset 'l9'"):
        equiformer_preset("l9")


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"num_layers": 0}, ConfigError, r"model\.num_layers must be >= 1, got 0"),
        ({"max_radius": 0.0}, ConfigError, r"model\.max_radius must be > 0, got 0\.0"),
        ({"fc_neurons": [8, 0]}, ConfigError, r"model\.fc_neurons\[1\] must be >= 1, got 0"),
        ({"proj_drop": 1.0}, ConfigError, r"model\.proj_drop must be < 1, got 1\.0"),
        ({"num_heads": True}, ConfigError, r"model\.num_heads must be of type int"),
        ({"irreps_node_embedding": "4x1e"}, ValueError, "needs 0e channels"),
        ({"noise_head": True, "irreps_feature_dens": "4x1e"}, ValueError, "energy head"),
        ({"irreps_head": "2x1e"}, ValueError, "irreps_head needs type-0 channels"),
        ({"irreps_mlp_mid": "2x1o"}, ValueError, "odd parity"),
        ({"basis_type": "sinc"}, ValueError, "basis_type must be one of"),
    ],
)
def test_settings_are_checked_before_any_module_is_built(
    change: dict, error: type[Exception], message: str
) -> None:
    """EquiformerSettings refuses what the network could not build, naming the setting."""
    with pytest.raises(error, match=message):
        EquiformerSettings(**{**SMALL_L2, **change})


def test_settings_are_frozen_and_the_network_takes_only_them() -> None:
    """A list becomes a tuple (the settings hash and compare by value); the network keeps its
    settings and refuses anything else."""
    settings = EquiformerSettings(**SMALL_L2)
    assert settings.fc_neurons == (8,) and settings == EquiformerSettings(**SMALL_L2)
    assert hash(settings) == hash(EquiformerSettings(**SMALL_L2))
    assert isinstance(EquiformerSettings(max_radius=5).max_radius, float)
    assert Equiformer(settings).settings is settings and Equiformer.settings_type is type(settings)
    with pytest.raises(TypeError, match="EquiformerSettings"):
        Equiformer(dict(SMALL_L2))


# ---------------------------------------------------------------- DeNS modules and initial weights
