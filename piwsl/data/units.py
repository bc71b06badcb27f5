"""Units of the prepared data and of the source formats, and the energy-unit sanity check.

Every prepared data set holds energies in kcal/mol, forces in kcal/mol/Å and positions in Å
(METHOD.md, "Data protocol"). Readers convert from their format's unit with the factors below.
"""

from __future__ import annotations

import numpy as np

HARTREE_TO_KCAL_PER_MOL = 627.509474
EV_TO_KCAL_PER_MOL = 23.060548

ENERGY_UNIT = "kcal/mol"
FORCE_UNIT = "kcal/mol/Angstrom"
POSITION_UNIT = "Angstrom"

#: kcal/mol per unit of energy, for the energy units source files use.
KCAL_PER_MOL_PER = {"hartree": HARTREE_TO_KCAL_PER_MOL, "eV": EV_TO_KCAL_PER_MOL, "kcal/mol": 1.0}

#: Thomas-Fermi total electronic energy of a neutral atom: -THOMAS_FERMI_HARTREE * Z**(7/3) Ha.
THOMAS_FERMI_HARTREE = 0.7687
#: Headroom of the unit check over the Thomas-Fermi estimate (which already exceeds the exact
#: all-electron energies of H to U by 10-50 %), and an allowance per atom for binding, in Ha.
SCALE_HEADROOM = 1.5
BINDING_ALLOWANCE_HARTREE = 1.0


def energy_magnitude_bound(numbers: np.ndarray) -> float:
    """Largest plausible |total energy| of a structure with atomic numbers ``numbers``, in kcal/mol.

    No electronic-structure method gives a total energy beyond the all-electron energy of the
    free atoms plus their binding energy; pseudopotential, tight-binding and referenced energies
    are smaller still. The bound is ``sum_i (1.5 * 0.7687 * Z_i**(7/3) + 1)`` Ha, the
    Thomas-Fermi atomic energies with 50 % headroom plus 1 Ha per atom: about twice the real
    all-electron energy of any element (C: 77 vs 37.8 Ha; Ti: 1,568 vs 849 Ha; Pb: 33,700 vs
    20,900 Ha).
    """
    z = np.asarray(numbers, dtype=np.float64)
    per_atom = SCALE_HEADROOM * THOMAS_FERMI_HARTREE * z ** (7.0 / 3.0) + BINDING_ALLOWANCE_HARTREE
    return float(per_atom.sum()) * HARTREE_TO_KCAL_PER_MOL


#: Plausibility of a data set's labels (kcal/mol, kcal/mol/Å), beyond the hard bound above.
#: RMS force component: above 10 eV/Å implausible, above 100 eV/Å not physical for any data set;
#: below 0.05 kcal/mol/Å only relaxed structures (Hartree/Bohr read as kcal/mol/Å gives ~0.02).
FORCE_RMS_IMPLAUSIBLE = 10 * EV_TO_KCAL_PER_MOL
FORCE_RMS_IMPOSSIBLE = 100 * EV_TO_KCAL_PER_MOL
FORCE_RMS_TINY = 0.05
#: Total energies per atom (unreferenced, kcal/mol): every molecular method gives hundreds or more
#: (H atom: 313 exact, ~250 GFN2-xTB; bundled GFN2-xTB aspirin: 1,183); Hartree read as kcal/mol: ~2-30.
MIN_TOTAL_ENERGY_PER_ATOM = 50.0
#: ``std(E) / (F_rms * sqrt(3 N) * 1 Å)``: energy spread against the work forces do over 1 Å. Bundled
#: GFN2-xTB MD at 500 K: 0.023 (aspirin), 0.019 (ethanol); structures rattled by s Å give ~0.7 s.
#: Energies 23x too small relative to the forces (eV read as kcal/mol) give ~1e-3, 627x (Hartree) ~4e-5.
ENERGY_FORCE_RATIO_SUSPICIOUS = 2e-3
ENERGY_FORCE_RATIO_IMPOSSIBLE = 2e-4
