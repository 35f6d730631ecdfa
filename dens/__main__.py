"""``python -m dens``: the ``dens`` command, runnable from a source checkout without installing
(the pipeline's rules call it so, which works inside a conda environment of workflow/envs/)."""

import sys

from dens.pipeline.cli import main

sys.exit(main())
