"""The pipeline that reproduces the paper with the library: the experiment registry
(``registry``: config/ validated and resolved per scale), where files live (``paths``), the
``dens`` command (``cli``), Slurm continuation (``slurm``), IS2RE relaxation jobs (``is2re``),
fairchem checkpoint import (``checkpoint_import``), the published checkpoints (``published``),
evaluation-server files (``submission``), and the tables, figures, learning curves and HTML
report built from the runs' metrics (``tables``, ``figures``, ``curves``, ``report``).

The library (every other module of ``dens``) never imports this package
(tests/test_layout.py); the Snakefile and its rules drive the library through it.
"""
