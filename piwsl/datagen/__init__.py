"""Reference-data generators: real semi-empirical quantum chemistry (GFN-xTB through tblite).

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

Requires the ``datagen`` extra (tblite, rdkit, selfies); run with ``OMP_NUM_THREADS=1``.
"""
