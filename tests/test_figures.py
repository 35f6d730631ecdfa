"""dens.pipeline.figures: Figures 3-5 as PNG and PDF, one structure (a distinct system) per row."""

from __future__ import annotations

from pathlib import Path

import ase.build
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from dens.data.aselmdb import write_aselmdb
from dens.errors import ConfigError
from dens.pipeline.figures import FIGURES, draw_figure, read_structures


def training_split(path: Path, systems: int, frames: int = 2) -> Path:
    """``systems`` Cu slabs with an O adsorbate, ``frames`` frames each (sid, fid)."""
    rows = []
    for sid in range(systems):
        for fid in range(frames):
            atoms = ase.build.fcc111("Cu", (2, 2, 3), vacuum=5.0)
            ase.build.add_adsorbate(atoms, "O", 1.5 + 0.1 * sid, "fcc")
            atoms.positions[-1, 2] += 0.05 * fid
            atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((13, 3)))
            atoms.info = {"sid": 10 + sid, "fid": fid}
            rows.append(atoms)
    write_aselmdb(path, rows)
    return path


def test_read_structures_takes_the_first_frame_of_distinct_systems(tmp_path: Path) -> None:
    path = training_split(tmp_path / "train.aselmdb", systems=4)
    structures = read_structures(path, 3)
    heights = [positions[-1, 2] - positions[:-1, 2].max() for positions, _ in structures]
    np.testing.assert_allclose(heights, [1.5, 1.6, 1.7], atol=1e-9)  # fid 0 of sids 10, 11, 12
    assert all(numbers[-1] == 8 for _, numbers in structures)
    with pytest.raises(ValueError, match=r"train.aselmdb: 4 system\(s\), the figure needs 5"):
        read_structures(path, 5)


def test_oc_figure_png_and_pdf_one_row_per_system(tmp_path: Path) -> None:
    path = training_split(tmp_path / "train.aselmdb", systems=FIGURES["figure3"].rows)
    png, pdf = draw_figure("figure3", [path], tmp_path / "figures" / "figure3.png", "smoke")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert pdf == png.with_suffix(".pdf") and pdf.read_bytes()[:5] == b"%PDF-"
    from PIL import Image

    with Image.open(png) as image:
        width, height = image.size
    rows, columns = FIGURES["figure3"].rows, len(FIGURES["figure3"].sigmas) + 1
    assert (columns, rows) == (4, 3)
    assert width / height == pytest.approx(2.6 * columns / (2.4 * rows), rel=0.02)


def test_figure_refuses_bad_requests(tmp_path: Path) -> None:
    path = training_split(tmp_path / "train.aselmdb", systems=3)
    with pytest.raises(ConfigError, match="unknown figure 'figure9'"):
        draw_figure("figure9", [path], tmp_path / "x.png", "smoke")
    with pytest.raises(ConfigError, match=r"figure5 draws 4 dataset\(s\)"):
        draw_figure("figure5", [path], tmp_path / "x.png", "smoke")
