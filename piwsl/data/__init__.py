"""Turning reference data into fairchem LMDBs with the paper's split protocol.

``formats``/``ani1x`` read each format into ``Structure`` records (kcal/mol, kcal/mol/Å, Å);
``prepare.prepare_dataset`` is the one pipeline they stream into (split, self energies, checks,
LMDB writers, ``metadata.json``); ``scripts/prepare_data.py`` is its command line.
"""
