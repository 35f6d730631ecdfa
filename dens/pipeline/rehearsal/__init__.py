"""The rehearsal of the paper scale (README "Rehearse the paper scale"; `make rehearsal`): the
paper path on small archives in the official layouts.

Modules: builders (archives laid out like the OC20/OC22/MD17 releases), generate (every archive
of the tables and a stand-in catalog of them), server (127.0.0.1 HTTP servers), slurm_cluster (a
one-node Slurm cluster on localhost, or the working one), run (`make rehearsal`: all of it, and
the jobs' timings per family).
"""
