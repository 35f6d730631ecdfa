"""The package's public API: every exported name resolves, and `import dens` stays cheap."""

from __future__ import annotations

import subprocess
import sys

import dens


def test_every_exported_name_resolves() -> None:
    for name in dens.__all__:
        assert getattr(dens, name) is not None, name


def test_import_dens_does_not_import_torch() -> None:
    code = (
        "import sys, dens, dens.pipeline.registry, dens.pipeline.paths; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_readme_loop_names_come_from_the_package() -> None:
    from dens import DeNSSettings, LossSettings, corrupt, dens_coefficient, dens_loss
    from dens.denoising import corrupt as corrupt_in_module

    assert corrupt is corrupt_in_module
    assert {DeNSSettings, LossSettings, dens_coefficient, dens_loss}
