"""Turning reference data into fairchem LMDBs with the paper's split protocol."""
