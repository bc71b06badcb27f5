"""Experiment tooling: grids of runs, a resumable runner (local or SLURM), aggregation and diagnostics.

``piwsl.experiments.grid`` reads a grid file and expands it into runs, ``runner`` prepares data,
trains and evaluates them, ``aggregate`` turns their result files into the paper's tables and
figures, and ``rotation``, ``bond_scan``, ``md`` and ``hpo`` hold the diagnostics' and the
hyper-parameter search's logic. The command-line entry points are in ``scripts/``.
"""
