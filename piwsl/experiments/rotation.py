"""How far predicted forces are from conservative: the rotation (curl) of a force field (App. L).

Forces are conservative, ``F = -dE/dr``, exactly when the force Jacobian
``J[(i,a), (k,b)] = dF_{i,a} / dr_{k,b}`` (3N x 3N, kcal/mol/Å²) is symmetric: it is then minus
the Hessian of E. Its antisymmetric part ``A = (J - J^T) / 2`` measures the rotation; the
circulation of F around a small square loop of side ε that goes along unit direction u first,
then v (then back along -u, -v) is ``∮ F·dr ≈ -2 ε² uᵀ A v`` (0 for conservative forces), the
energy an MD trajectory gains or loses per cycle. We report, per structure:

- **total rotation** (the paper's Table 17 quantity): ``Σ_i |∇_{r_i} × F_i|``, the curl of each
  atom's force with respect to its own position (the antisymmetric part of J's 3x3 diagonal
  blocks: ``curl_i = (J_zy - J_yz, J_xz - J_zx, J_yx - J_xy)``), summed over atoms, kcal/mol/Å²;
- **mean curl** per atom, ``total rotation / N``, kcal/mol/Å²;
- **asymmetry** ``‖A‖_F / ‖J‖_F`` over the whole Jacobian, dimensionless in [0, 1]: 0 for
  conservative forces, 1 for a purely rotational field (J antisymmetric); it also sees curl
  between different atoms' coordinates, which the per-atom curl does not.

J is computed by central finite differences of the predicted forces with step h (Å), which works
for any model (force head or gradient): for a conservative field the finite-difference J is
symmetric up to O(h²) and float32 round-off, far below the values force heads show.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Forces (K, N, 3) of K geometries (K, N, 3): positions in Å, forces in kcal/mol/Å.
ForceField = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Rotation:
    """Rotation measures of one structure's force field (see the module docstring)."""

    total_rotation: float
    mean_curl: float
    asymmetry: float
    curl: np.ndarray


def force_jacobian(forces: ForceField, positions: np.ndarray, step: float = 1e-3) -> np.ndarray:
    """``J[(i,a), (k,b)] = dF_{i,a}/dr_{k,b}`` (3N x 3N) by central differences with step ``step`` Å."""
    positions = np.asarray(positions, dtype=np.float64)
    size = positions.size
    displacements = np.eye(size).reshape(size, *positions.shape) * step
    geometries = np.concatenate([positions + displacements, positions - displacements])
    predicted = np.asarray(forces(geometries), dtype=np.float64).reshape(2, size, size)
    return ((predicted[0] - predicted[1]) / (2.0 * step)).T


def rotation(jacobian: np.ndarray) -> Rotation:
    """Per-atom curls, total rotation and asymmetry of a force Jacobian (3N x 3N)."""
    natoms = jacobian.shape[0] // 3
    blocks = np.stack([jacobian[3 * i : 3 * i + 3, 3 * i : 3 * i + 3] for i in range(natoms)])
    curl = np.stack(
        [
            blocks[:, 2, 1] - blocks[:, 1, 2],
            blocks[:, 0, 2] - blocks[:, 2, 0],
            blocks[:, 1, 0] - blocks[:, 0, 1],
        ],
        axis=1,
    )
    total = float(np.linalg.norm(curl, axis=1).sum())
    norm = float(np.linalg.norm(jacobian))
    antisymmetric = float(np.linalg.norm(0.5 * (jacobian - jacobian.T)))
    return Rotation(
        total_rotation=total,
        mean_curl=total / natoms,
        asymmetry=antisymmetric / norm if norm > 0 else 0.0,
        curl=curl,
    )
