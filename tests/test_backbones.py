"""Backbones (SchNet, PaiNN, eSCN, EquiformerV2): gradient forces, symmetries, PIWSL training, configs.

Physics checks run in float64 on real GFN2-xTB ethanol frames (and a small periodic cell), with tiny
models whose parameters are moved away from their initialization, so that every feature channel
matters (at initialization eSCN and EquiformerV2 are nearly isotropic and hide errors).
fairchem's periodic neighbour search keeps cells in float32; offsets are constants of the
positions, so finite differences stay exact.

Which symmetries hold (rotation + translation, models away from initialization, measured here):

- SchNet, PaiNN (both force modes): energy invariant and forces equivariant to rounding (1e-15).
- EquiformerV2: to ~1e-6 (energy) and ~2e-5 (forces) relative: its S2 activations run on a finite
  grid (resolution 18 here) and alias.
- eSCN: to ~2e-5 (energy) and ~2e-2 (forces): its energy and force heads integrate over a fixed
  set of sphere points and its messages pass a grid activation in the edge frame.

In direct mode both also change from call to call by about as much (fairchem rolls each edge frame
by a random angle); in gradient mode the frames are fixed and the outputs deterministic.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from e3nn import o3
from fairchem.core.common.registry import registry
from fairchem.core.common.utils import load_config, setup_imports
from fairchem.core.datasets.lmdb_dataset import data_list_collater
from fairchem.core.models.escn.so3 import SO3_Rotation
from torch import nn
from torch_geometric.data import Batch
from trainer_helpers import ETHANOL, make_trainer, prepare_ethanol, tiny_config

import piwsl.models  # noqa: F401  (registers the models)
from piwsl.config import PIWSLConfig
from piwsl.data.formats import read_rmd17
from piwsl.data.structures import Structure, molecule
from piwsl.models.gradient_forces import REFERENCE_DIRECTION, SampledWignerD, edge_frames

ROOT = Path(__file__).resolve().parents[1]
CUTOFF = 4.0
#: Tiny sizes; ``name`` is the registered model, the rest its arguments.
TINY: dict[str, dict] = {
    "schnet": {"name": "schnet", "hidden_channels": 16, "num_filters": 16, "num_interactions": 2, "num_gaussians": 10},
    "painn": {"name": "painn_piwsl", "hidden_channels": 16, "num_layers": 2, "num_rbf": 8, "max_neighbors": 20},
    "escn": {
        "name": "escn_piwsl",
        "num_layers": 2,
        "lmax_list": [2],
        "mmax_list": [1],
        "sphere_channels": 8,
        "hidden_channels": 8,
        "edge_channels": 8,
        "num_sphere_samples": 128,
        "distance_resolution": 0.2,
        "max_neighbors": 20,
    },
    "equiformer_v2": {
        "name": "equiformer_v2_piwsl",
        "num_layers": 2,
        "lmax_list": [2],
        "mmax_list": [1],
        "grid_resolution": 18,
        "sphere_channels": 8,
        "attn_hidden_channels": 8,
        "num_heads": 2,
        "attn_alpha_channels": 4,
        "attn_value_channels": 4,
        "ffn_hidden_channels": 8,
        "edge_channels": 8,
        "num_distance_basis": 16,
        "alpha_drop": 0.0,
        "drop_path_rate": 0.0,
        "max_neighbors": 20,
    },
}
#: fairchem's parent of each of our models.
PARENT = {"painn_piwsl": "painn", "escn_piwsl": "escn", "equiformer_v2_piwsl": "equiformer_v2"}
MODES = [("schnet", "gradient")] + [(b, m) for b in ("painn", "escn", "equiformer_v2") for m in ("direct", "gradient")]
GRADIENT = ["schnet", "painn", "escn", "equiformer_v2"]
#: Relative tolerances (energy, forces) of rotation + translation invariance / equivariance.
SYMMETRY_TOLERANCE = {
    "schnet": (1e-12, 1e-10),
    "painn": (1e-12, 1e-10),
    "equiformer_v2": (1e-5, 1e-4),
    "escn": (1e-4, 5e-2),
}


@pytest.fixture(scope="module", autouse=True)
def registered_models() -> None:
    setup_imports()  # fairchem's own models (schnet) register on import


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # fairchem creates some buffers in the default dtype
    yield
    torch.set_default_dtype(previous)


def model_arguments(backbone: str, mode: str) -> dict:
    """Registered name and keyword arguments of a tiny model in the given force mode."""
    arguments = {**TINY[backbone], "cutoff": CUTOFF, "use_pbc": True, "otf_graph": True, "regress_forces": True}
    if backbone == "equiformer_v2":
        arguments["max_radius"] = arguments.pop("cutoff")
    if backbone != "schnet":
        arguments["direct_forces"] = mode == "direct"
    return arguments


def perturb(model: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Add seeded Gaussian noise to every trainable parameter (a model away from its initialization)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                parameter.add_(scale * noise.to(parameter.dtype))
    return model


def build(backbone: str, mode: str, name: str | None = None, **overrides) -> nn.Module:
    """A seeded, perturbed, float64 tiny model in eval mode (``name`` overrides the registered class)."""
    arguments = model_arguments(backbone, mode) | overrides
    registered = arguments.pop("name")
    if name in ("escn", "equiformer_v2"):
        del arguments["direct_forces"]  # fairchem's eSCN and EquiformerV2 have a force head only
    torch.manual_seed(0)
    model = registry.get_model_class(name or registered)(**arguments)
    return perturb(model.double()).eval()


def batch_of(structures: list[Structure]) -> Batch:
    batch = data_list_collater([structure.to_data(i) for i, structure in enumerate(structures)], otf_graph=True)
    batch.pos = batch.pos.double()
    return batch


@pytest.fixture(scope="module")
def ethanol() -> Batch:
    return batch_of(read_rmd17(ETHANOL)[:2])


def periodic_cell() -> Batch:
    """Three atoms in a 3.2 Å cubic cell: periodic images along x, y and z lie exactly on the axes."""
    positions = np.array([[0.1, 0.2, 0.05], [1.55, 1.7, 1.45], [0.2, 1.5, 2.1]])
    structure = Structure(
        numbers=np.array([22, 8, 8]),
        positions=positions,
        energy=None,
        forces=None,
        cell=3.2 * np.eye(3),
        pbc=np.ones(3, dtype=bool),
        source="cubic test cell",
    )
    return batch_of([structure])


def special_directions() -> Batch:
    """A molecule with one bond exactly along y and one along the edge frames' reference direction."""
    reference = np.array(REFERENCE_DIRECTION) / np.linalg.norm(REFERENCE_DIRECTION)
    positions = np.array([[0.0, 0.0, 0.0], [0.0, 1.1, 0.0], 1.3 * reference, [-0.9, 0.4, 0.7]])
    return batch_of([molecule(np.array([6, 1, 8, 1]), positions, None, None, "special edge directions")])


def outputs_at(model: nn.Module, batch: Batch, positions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The model's detached outputs for a copy of ``batch``, optionally at other positions."""
    batch = batch.clone()
    if positions is not None:
        batch.pos = positions
    return {key: value.detach() for key, value in model(batch).items()}


def energy_and_forces(model: nn.Module, batch: Batch, positions: torch.Tensor | None = None) -> tuple:
    out = outputs_at(model, batch, positions)
    return out["energy"].view(-1), out["forces"]


def energy_gradient(model: nn.Module, batch: Batch) -> torch.Tensor:
    """dE/dr by autograd through a model's energy (whatever its own force output is)."""
    batch = batch.clone()
    batch.pos.requires_grad_(True)
    with torch.enable_grad():
        energy = model(batch)["energy"].sum()
        (gradient,) = torch.autograd.grad(energy, batch.pos)
    return gradient


def finite_difference_error(model: nn.Module, batch: Batch, gradient: torch.Tensor, step: float = 1e-5) -> float:
    """Largest error of ``gradient`` (= dE/dr) along 3 random directions, relative to |gradient|.

    Directional derivatives by the 4th-order central difference (E(-2h) - 8 E(-h) + 8 E(h) - E(2h)) / 12h.
    """
    generator = torch.Generator().manual_seed(1)
    errors = []
    for _ in range(3):
        direction = torch.randn(batch.pos.shape, generator=generator, dtype=torch.float64)
        direction /= direction.norm()
        energies = []
        for k in (-2, -1, 1, 2):
            with torch.no_grad():
                energies.append(float(outputs_at(model, batch, batch.pos + k * step * direction)["energy"].sum()))
        numeric = (energies[0] - 8 * energies[1] + 8 * energies[2] - energies[3]) / (12 * step)
        errors.append(abs(numeric - float((gradient * direction).sum())))
    return max(errors) / float(gradient.norm())


# ---------------------------------------------------------------------- gradient forces
@pytest.mark.parametrize("backbone", GRADIENT)
def test_gradient_forces_match_finite_differences(float64, ethanol, backbone):
    model = build(backbone, "gradient")
    energy, forces = energy_and_forces(model, ethanol)
    assert energy.shape == (2,) and forces.shape == ethanol.pos.shape
    assert finite_difference_error(model, ethanol, -forces) < 1e-7


@pytest.mark.parametrize("backbone", GRADIENT)
def test_gradient_forces_on_a_cell_with_axis_aligned_images(float64, backbone):
    """Periodic images along y are where Euler-angle Wigner matrices have infinite derivatives."""
    cell = periodic_cell()
    model = build(backbone, "gradient")
    _, forces = energy_and_forces(model, cell)
    assert torch.isfinite(forces).all()
    assert finite_difference_error(model, cell, -forces) < 1e-7


@pytest.mark.parametrize("backbone", ["escn", "equiformer_v2"])
def test_gradient_forces_for_bonds_along_y_and_the_reference_direction(float64, backbone):
    structure = special_directions()
    model = build(backbone, "gradient")
    _, forces = energy_and_forces(model, structure)
    assert torch.isfinite(forces).all()
    assert finite_difference_error(model, structure, -forces) < 1e-7


@pytest.mark.parametrize("backbone", ["painn", "escn", "equiformer_v2"])
def test_fairchem_gradient_forces_are_wrong(float64, ethanol, backbone):
    """Why the subclasses exist: fairchem-core 1.3.0's own -dE/dr misses terms (detached edge frames)
    and PaiNN's gradient mode differentiates its node features instead of its energy."""
    parent = PARENT[TINY[backbone]["name"]]
    if backbone == "painn":
        model = build(backbone, "gradient", name=parent)
        gradient = -energy_and_forces(model, ethanol)[1]
    else:
        model = build(backbone, "direct", name=parent, regress_forces=False)
        gradient = energy_gradient(model, ethanol)
    assert finite_difference_error(model, ethanol, gradient) > 1e-4  # ours: < 1e-8


def test_painn_gradient_forces_without_periodic_graphs(float64, ethanol):
    """``use_pbc: False``: fairchem's PaiNN writes into the distances autograd needs; ours does not.

    The graph is given (``otf_graph: False``): on-the-fly non-periodic graphs need pyg-lib here.
    """
    batch = ethanol.clone()
    distances = torch.cdist(batch.pos, batch.pos)
    same_molecule = batch.batch[:, None] == batch.batch[None, :]
    neighbours = (distances < CUTOFF) & same_molecule & ~torch.eye(len(distances), dtype=torch.bool)
    batch.edge_index = neighbours.nonzero().t().flip(0).contiguous()
    settings = {"use_pbc": False, "otf_graph": False}
    with pytest.raises(RuntimeError, match="inplace operation"):
        energy_and_forces(build("painn", "gradient", name="painn", **settings), batch)
    model = build("painn", "gradient", **settings)
    _, forces = energy_and_forces(model, batch)
    assert finite_difference_error(model, batch, -forces) < 1e-7


def test_sampled_wigner_matrices_equal_fairchem_and_frames_are_rotations(float64):
    rotations = o3.rand_matrix(16)
    ours = SampledWignerD(6)(rotations)
    assert torch.allclose(ours, SO3_Rotation(rotations, 6).wigner, atol=1e-12)
    vectors = torch.randn(64, 3)
    frames = edge_frames(vectors)
    assert torch.allclose(frames @ frames.transpose(1, 2), torch.eye(3).expand(64, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(frames), torch.ones(64))
    mapped = (frames @ vectors.unsqueeze(-1)).squeeze(-1) / vectors.norm(dim=-1, keepdim=True)
    assert torch.allclose(mapped, torch.tensor([0.0, 1.0, 0.0]).expand(64, 3), atol=1e-12)


@pytest.mark.parametrize("backbone", ["painn", "escn", "equiformer_v2"])
def test_direct_mode_is_the_parent_and_gradient_mode_has_its_parameters(float64, ethanol, backbone):
    name = TINY[backbone]["name"]
    ours, parent = build(backbone, "direct"), build(backbone, "direct", name=PARENT[name])
    assert ours.state_dict().keys() == parent.state_dict().keys()
    for key, value in parent.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    outputs = []
    for model in (ours, parent):
        torch.manual_seed(3)  # fairchem's edge frames draw random vectors
        outputs.append(energy_and_forces(model, ethanol))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    energy_only_parent = build(backbone, "direct", name=PARENT[name], regress_forces=False)
    assert build(backbone, "gradient").state_dict().keys() == energy_only_parent.state_dict().keys()


@pytest.mark.parametrize("backbone", ["escn", "equiformer_v2"])
def test_gradient_mode_is_deterministic(float64, ethanol, backbone):
    model = build(backbone, "gradient")
    first, second = energy_and_forces(model, ethanol), energy_and_forces(model, ethanol)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


# ---------------------------------------------------------------------- symmetries
@pytest.mark.parametrize("backbone, mode", MODES)
def test_energy_invariant_and_forces_equivariant(float64, ethanol, backbone, mode):
    model = build(backbone, mode)
    generator = torch.Generator().manual_seed(2)
    rotation = o3.rand_matrix()
    shift = torch.randn(3, generator=generator, dtype=torch.float64)
    energy, forces = energy_and_forces(model, ethanol)
    moved_energy, moved_forces = energy_and_forces(model, ethanol, ethanol.pos @ rotation.T + shift)
    energy_error = float((moved_energy - energy).abs().max() / energy.abs().max())
    force_error = float((moved_forces - forces @ rotation.T).abs().max() / forces.abs().max())
    energy_tolerance, force_tolerance = SYMMETRY_TOLERANCE[backbone]
    assert energy_error < energy_tolerance and force_error < force_tolerance, (energy_error, force_error)


# ---------------------------------------------------------------------- training
def training_config(run_dir: Path, backbone: str, mode: str, energy_only: bool) -> dict:
    """The tiny demo trainer on fresh ethanol LMDBs, with this backbone and our run configs' losses.

    Gradient forces get tied normalizers (one scale for energies and forces, here the training
    energies' standard deviation), so that physical forces are -dE/dr of physical energies; the run
    configs tie them at 1 (physical units), the same structure with another scale.
    """
    data = prepare_ethanol(run_dir, energy_only=energy_only)
    config = tiny_config(data, run_dir, {"method": "piwsl", "preset": "D"})
    config["model"] = model_arguments(backbone, mode)
    config["optim"]["lr_initial"] = 5e-4
    normalizer = config["dataset"]["train"]["transforms"]["normalizer"]
    scale = json.loads((data / "metadata.json").read_text())["train_statistics"]["energy_std"]
    tied = {"energy": {"rmsd": scale}, "forces": {"mean": 0.0, "rmsd": scale}}
    if energy_only:
        config["loss_functions"][1]["forces"]["coefficient"] = 0
        normalizer["fit"]["targets"] = ["energy"]
        normalizer["fit"]["override_values"] = {"energy": tied["energy"]} if mode == "gradient" else {}
        if mode == "gradient":
            normalizer["forces"] = tied["forces"]
    elif mode == "gradient":
        normalizer["fit"]["targets"] = tied
    return config


def loss_at(trainer, batch: Batch, sampler_state: dict) -> torch.Tensor:
    trainer.random_sampler.load_state_dict(copy.deepcopy(sampler_state))
    trainer.model.train()
    return trainer._compute_loss(trainer._forward(copy.deepcopy(batch)), batch)


@pytest.mark.parametrize("energy_only", [False, True], ids=["forces", "energy_only"])
@pytest.mark.parametrize("backbone, mode", MODES)
def test_piwsl_training_steps_decrease_the_loss(tmp_path, backbone, mode, energy_only):
    """A few steps on one batch: finite losses and gradients, and a lower loss.

    Models start perturbed: an initial tiny eSCN predicts the same energy, 1e-3 of the others'
    scale, for every structure (a plateau of the energy MAE). Even so its gradient forces start
    ~1e-6 of the force labels, so a few steps move its force-dominated loss by less than float32
    resolution: there the test asks for finite values and gradients only.
    """
    trainer = make_trainer(training_config(tmp_path, backbone, mode, energy_only))
    perturb(trainer.model)
    trainer.step = 1
    batch = next(iter(trainer.train_loader))
    state = copy.deepcopy(trainer.random_sampler.state_dict())
    losses = []
    for _ in range(8):
        loss = loss_at(trainer, batch, state)
        losses.append(float(loss.detach()))
        trainer._backward(loss)
    losses.append(float(loss_at(trainer, batch, state).detach()))
    assert all(math.isfinite(value) for value in losses), losses
    assert "pitc_loss" in trainer.metrics and "pisc_loss" in trainer.metrics
    gradients = [p.grad for p in trainer.model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in gradients)
    if (backbone, mode, energy_only) != ("escn", "gradient", False):
        assert losses[-1] < losses[0], losses


# ---------------------------------------------------------------------- configs
CONFIGS = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "configs").rglob("*.yml"))
#: Size settings replaced by tiny ones when a config's model is built (only keys the config sets).
TINY_SIZES = {
    "hidden_channels": 8,
    "num_filters": 8,
    "num_interactions": 1,
    "num_gaussians": 8,
    "num_layers": 1,
    "num_rbf": 8,
    "lmax_list": [2],
    "mmax_list": [1],
    "sphere_channels": 4,
    "edge_channels": 8,
    "num_sphere_samples": 16,
    "attn_hidden_channels": 8,
    "num_heads": 2,
    "attn_alpha_channels": 4,
    "attn_value_channels": 4,
    "ffn_hidden_channels": 8,
    "grid_resolution": 8,
    "num_radial": 8,
}


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_and_builds_its_model(path):
    config, _, duplicates_error = load_config(ROOT / path)
    assert not duplicates_error, duplicates_error
    if "piwsl" in config:
        PIWSLConfig.from_dict(config["piwsl"])
        assert config["model"]["otf_graph"] and "dataset" in config and "loss_functions" in config
    if "model" not in config:
        return  # a pure base (common.yml, a dataset's base.yml)
    arguments = copy.deepcopy(config["model"])
    arguments.update({key: value for key, value in TINY_SIZES.items() if key in arguments})
    torch.manual_seed(0)
    model = registry.get_model_class(arguments.pop("name"))(**arguments)
    batch = data_list_collater([s.to_data(i) for i, s in enumerate(read_rmd17(ETHANOL)[:2])], otf_graph=True)
    out = model(batch)
    assert out["energy"].numel() == 2 and out["forces"].shape == batch.pos.shape
