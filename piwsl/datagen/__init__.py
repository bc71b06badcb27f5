"""Reference-data generators: real quantum chemistry (GFN-xTB through tblite, DFT through PySCF).

No public data set can be downloaded in the build environment, so these modules make real labels
here. ``scripts/generate_reference_data.py`` is their command line.

Modules:
    common: atomic writes, provenance (package versions, command line), finiteness checks.
    xtb: xTB energies and forces, finite-difference force check.
    molecules: geometries from SMILES (RDKit) or ASE's G2 collection, rattles with a distance guard.
    md: Langevin MD of any molecule, rMD17 ``.npz`` layout (``generate_md``).
    ani1x_like: rattled small molecules in the ANI-1x HDF5 layout.
    many_molecules: thousands of random C/H/N/O molecules (SELFIES), ANI-1x HDF5 layout, resumable.
    tio2: strained and rattled rutile/anatase cells, aenet XSF files.
    sgdml: the sGDML npz layout of MD17/MD22 (``write_sgdml``).
    dft: DFT energies (training frames) and energies+forces (test frames) of a trajectory, PySCF, resumable.

Requires the ``datagen`` extra (tblite, rdkit, selfies, pyscf); run with ``OMP_NUM_THREADS=1``.
"""
