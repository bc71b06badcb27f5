"""fairchem backbones with correct gradient (conservative) forces, registered under their own names.

Registered in fairchem's registry (``model: {name: ...}`` in a config):

- ``painn_piwsl``: fairchem's ``painn``;
- ``escn_piwsl``: fairchem's ``escn``;
- ``equiformer_v2_piwsl``: fairchem's ``equiformer_v2`` (the single-module class, not the hydra one).

Each takes its parent's arguments plus ``direct_forces`` (also an attribute, as on fairchem's PaiNN).
With ``direct_forces: True`` (the default) the model is its parent: same parameters, same outputs,
same force head (eSCN and EquiformerV2 no longer record a graph under ``torch.no_grad()``). With
``direct_forces: False`` there is no force head and the forces are ``F = -dE/dr`` by autograd, in
the units of the energy per Å; the parent is built with ``regress_forces=False`` (energy only) and
this module differentiates its energy. ``painn_piwsl`` also copies the edge distances before
PaiNN overwrites short ones in place (same values, in both modes). fairchem's SchNet (``schnet``)
is gradient-only and already correct, so it has no subclass here.

What is wrong in fairchem-core 1.3.0 (float64 finite differences on ethanol, tiny models; largest
component error relative to the largest force; ``tests/test_backbones.py``):

- PaiNN with ``direct_forces: False`` returns minus the gradient of the *sum of the final node
  features*, not of the energy (error 1.0 at initialization, 2.5 with perturbed weights). On
  non-periodic graphs (``use_pbc: False``) it also crashes: ``generate_graph_values`` writes into
  the distance tensor in place, and without periodic offsets that tensor is the output of the
  norm that autograd needs.
- eSCN and EquiformerV2 have no gradient mode, and ``-dE/dr`` by autograd is wrong because the
  per-edge rotation matrices *and* the Wigner-D matrices built from them are detached (eSCN 1-13%,
  EquiformerV2 0.2-0.3%). Their frames also roll about each edge by a random angle on every call;
  the grid activations are not exactly invariant to that roll, so the outputs change from call to
  call (relative to the largest value: eSCN 2e-5 energy and 5e-3 forces, EquiformerV2 1e-6 and
  3e-5, with perturbed weights), which also makes finite differences of their energy noisy.

The fix (gradient mode only): each edge frame is built from the edge direction and a fixed
reference vector (``edge_frames``), not detached, and the Wigner-D matrices are computed from the
frame as polynomials in its entries (``SampledWignerD``) instead of through Euler angles, whose
derivatives are infinite for edges parallel to the y axis (e.g. periodic images along a lattice
vector).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from e3nn import o3
from fairchem.core.common.registry import registry
from fairchem.core.models.base import GraphData
from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2
from fairchem.core.models.equiformer_v2.so3 import SO3_Rotation
from fairchem.core.models.escn.escn import eSCN
from fairchem.core.models.painn.painn import PaiNN
from torch import Tensor, nn
from torch_geometric.data import Batch

#: Reference direction of every edge frame: generic, so that no bond or lattice vector is parallel to it.
REFERENCE_DIRECTION = (1.0, math.sqrt(2.0), math.sqrt(3.0))
#: Used instead for edges within ``MIN_SINE`` of the reference direction.
FALLBACK_DIRECTION = (math.sqrt(2.0), -math.sqrt(3.0), 1.0)
MIN_SINE = 1.0e-3


def edge_frames(edge_vectors: Tensor) -> Tensor:
    """Rotation matrices (E, 3, 3) that map each edge direction onto +y, differentiable in the edge vectors.

    Same convention as fairchem's ``init_edge_rot_mat`` (rows ``z, x, -y`` of the edge frame, ``x``
    the edge direction), but the roll about the edge is fixed by ``REFERENCE_DIRECTION`` instead of
    a random vector: the frame is a deterministic, smooth function of the edge vector except in two
    cones of half-angle ``MIN_SINE`` rad around the reference direction.

    Args:
        edge_vectors: (E, 3) edge vectors in Å, none of zero length.
    """
    direction = edge_vectors / edge_vectors.norm(dim=-1, keepdim=True)
    reference = direction.new_tensor(REFERENCE_DIRECTION).expand_as(direction)
    fallback = direction.new_tensor(FALLBACK_DIRECTION).expand_as(direction)
    normal = torch.cross(direction, reference, dim=-1)
    near_parallel = normal.norm(dim=-1, keepdim=True) < MIN_SINE * math.sqrt(6.0)
    normal = torch.where(near_parallel, torch.cross(direction, fallback, dim=-1), normal)
    normal = normal / normal.norm(dim=-1, keepdim=True)
    binormal = torch.cross(direction, normal, dim=-1)
    return torch.stack([normal, direction, -binormal], dim=1)


def fibonacci_sphere(count: int) -> Tensor:
    """``count`` nearly uniform unit vectors (count, 3), float64."""
    index = torch.arange(count, dtype=torch.float64) + 0.5
    polar = torch.acos(1.0 - 2.0 * index / count)
    azimuth = math.pi * (1.0 + math.sqrt(5.0)) * index
    return torch.stack(
        [torch.cos(azimuth) * torch.sin(polar), torch.sin(azimuth) * torch.sin(polar), torch.cos(polar)], dim=-1
    )


class SampledWignerD(nn.Module):
    """Wigner-D matrices of real spherical harmonics (e3nn's basis, as fairchem uses), l = 0..lmax.

    Spherical harmonics of degree l transform as ``Y_l(R n) = D_l(R) Y_l(n)``. Evaluated at fixed
    sample points ``N`` this gives ``D_l(R) = Y_l(R N)^T pinv(Y_l(N)^T)``: a polynomial in the
    entries of ``R``, so it is exact, smooth and differentiable for every rotation (fairchem goes
    through Euler angles, singular for edges along y). It equals fairchem's matrices to rounding.
    """

    def __init__(self, lmax: int) -> None:
        super().__init__()
        self.lmax = lmax
        points = fibonacci_sphere(2 * (2 * lmax + 1))  # well conditioned for every l <= lmax
        self.register_buffer("points", points, persistent=False)
        for degree in range(lmax + 1):
            harmonics = o3.spherical_harmonics(degree, points, normalize=False)
            self.register_buffer(f"pinv_{degree}", torch.linalg.pinv(harmonics.T), persistent=False)

    def forward(self, rotation: Tensor) -> Tensor:
        """Block-diagonal Wigner-D matrices (E, (lmax+1)^2, (lmax+1)^2) of rotations (E, 3, 3)."""
        rotated = torch.einsum("eij,kj->eki", rotation, self.points.to(rotation.dtype))
        harmonics = o3.spherical_harmonics(list(range(self.lmax + 1)), rotated, normalize=False)
        size = (self.lmax + 1) ** 2
        wigner = rotation.new_zeros(rotation.shape[0], size, size)
        for degree in range(self.lmax + 1):
            block = slice(degree * degree, (degree + 1) ** 2)
            inverse = getattr(self, f"pinv_{degree}").to(rotation.dtype)
            wigner[:, block, block] = harmonics[:, :, block].transpose(1, 2) @ inverse
        return wigner


class GradientForcesMixin:
    """``forward`` that returns ``forces = -dE/dr`` of the parent's energy when ``gradient_forces`` is set.

    The parent must be built with ``regress_forces=False`` in that case, so that it computes the
    energy only. Gradients stay attached when grad mode is on (training through the forces);
    under ``torch.no_grad()`` the outputs are detached.
    """

    gradient_forces: bool = False

    def forward(self, data: Batch) -> dict[str, Tensor]:
        if not self.gradient_forces:
            return super().forward(data)
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            positions = data.pos
            if not positions.requires_grad:
                positions.requires_grad_(True)
            outputs = super().forward(data)
            (gradient,) = torch.autograd.grad(outputs["energy"].sum(), positions, create_graph=keep_graph)
        outputs["forces"] = -gradient
        if not keep_graph:
            outputs = {key: value.detach() for key, value in outputs.items()}
        return outputs


@registry.register_model("painn_piwsl")
class PaiNNPIWSL(GradientForcesMixin, PaiNN):
    """fairchem's PaiNN with ``F = -dE/dr`` when ``direct_forces`` is False, periodic or not."""

    def __init__(self, *, regress_forces: bool = True, direct_forces: bool = True, **kwargs: Any) -> None:
        super().__init__(regress_forces=regress_forces and direct_forces, direct_forces=direct_forces, **kwargs)
        self.gradient_forces = regress_forces and not direct_forces

    def generate_graph(self, *args: Any, **kwargs: Any) -> GraphData:
        """fairchem's graph, with a copy of the distances: PaiNN overwrites short ones in place."""
        graph = super().generate_graph(*args, **kwargs)
        graph.edge_distance = graph.edge_distance.clone()
        return graph


@registry.register_model("escn_piwsl")
class ESCNPIWSL(GradientForcesMixin, eSCN):
    """fairchem's eSCN; with ``direct_forces: False``, ``F = -dE/dr`` through differentiable edge frames.

    eSCN builds its Wigner-D matrices inside ``forward`` (detached), so in gradient mode a
    forward pre-hook on each layer block swaps in the differentiable ones computed by
    ``_init_edge_rot_mat``; the blocks are otherwise fairchem's.
    """

    def __init__(self, *, regress_forces: bool = True, direct_forces: bool = True, **kwargs: Any) -> None:
        super().__init__(regress_forces=regress_forces and direct_forces, **kwargs)
        self.direct_forces = direct_forces
        self.gradient_forces = regress_forces and not direct_forces
        self._edge_wigner: list[Tensor] = []
        if self.gradient_forces:
            self.wigner_d = nn.ModuleList(SampledWignerD(lmax) for lmax in self.lmax_list)
            for block in self.layer_blocks:
                block.register_forward_pre_hook(self._use_differentiable_wigner)

    def _init_edge_rot_mat(self, data: Batch, edge_index: Tensor, edge_distance_vec: Tensor) -> Tensor:
        if not self.gradient_forces:
            return super()._init_edge_rot_mat(data, edge_index, edge_distance_vec)
        frames = edge_frames(edge_distance_vec)
        self._edge_wigner = [wigner_d(frames) for wigner_d in self.wigner_d]
        return frames.detach()  # fairchem's own (detached) matrices are replaced by the pre-hook

    def _use_differentiable_wigner(self, block: nn.Module, args: tuple) -> None:
        rotations = args[4]  # LayerBlock.forward(x, atomic_numbers, edge_distance, edge_index, SO3_edge_rot, ...)
        for rotation, wigner in zip(rotations, self._edge_wigner, strict=True):
            rotation.wigner = wigner
            rotation.wigner_inv = wigner.transpose(1, 2).contiguous()


class DifferentiableSO3Rotation(SO3_Rotation):
    """EquiformerV2's ``SO3_Rotation`` whose Wigner-D matrices keep their gradient (``SampledWignerD``)."""

    def __init__(self, lmax: int) -> None:
        super().__init__(lmax)
        self.wigner_d = SampledWignerD(lmax)

    def set_wigner(self, rot_mat3x3: Tensor) -> None:
        self.device, self.dtype = rot_mat3x3.device, rot_mat3x3.dtype
        self.wigner = self.wigner_d(rot_mat3x3)
        self.wigner_inv = self.wigner.transpose(1, 2).contiguous()


@registry.register_model("equiformer_v2_piwsl")
class EquiformerV2PIWSL(GradientForcesMixin, EquiformerV2):
    """fairchem's EquiformerV2; with ``direct_forces: False``, ``F = -dE/dr`` through differentiable edge frames."""

    def __init__(self, *, regress_forces: bool = True, direct_forces: bool = True, **kwargs: Any) -> None:
        super().__init__(regress_forces=regress_forces and direct_forces, **kwargs)
        self.direct_forces = direct_forces
        self.gradient_forces = regress_forces and not direct_forces
        if self.gradient_forces:
            # In place: the blocks hold references to this same ModuleList.
            for index, lmax in enumerate(self.lmax_list):
                self.SO3_rotation[index] = DifferentiableSO3Rotation(lmax)

    def _init_edge_rot_mat(self, data: Batch, edge_index: Tensor, edge_distance_vec: Tensor) -> Tensor:
        if not self.gradient_forces:
            return super()._init_edge_rot_mat(data, edge_index, edge_distance_vec)
        return edge_frames(edge_distance_vec)
