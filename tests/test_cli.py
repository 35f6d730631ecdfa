"""The `dens` command: parameter counts of the paper-scale models, clear errors for the rest."""

from __future__ import annotations

import pytest

from dens.cli import main

PAPER_PARAMETERS = {  # Table 4 of the paper
    "md17-aspirin/equiformer-l2": 3.50e6,
    "md17-aspirin/equiformer-l2-dens": 4.00e6,
    "md17-ethanol/equiformer-l3": 5.50e6,
    "md17-ethanol/equiformer-l3-dens": 6.35e6,
}


@pytest.mark.parametrize(("experiment", "paper"), PAPER_PARAMETERS.items())
def test_params_matches_the_paper_within_3_percent(
    experiment: str, paper: float, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["params", experiment]) == 0
    count = int(capsys.readouterr().out.split("\t")[0])
    assert abs(count - paper) / paper < 0.03


def test_params_of_a_family_still_to_come_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "oc20-2m/eqv2-dens-e12"]) == 2
    assert "equiformer_v2" in capsys.readouterr().err


def test_unknown_experiment_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "md17-aspirin/equiformer-l4"]) == 2
    assert "unknown experiment 'md17-aspirin/equiformer-l4'" in capsys.readouterr().err


def test_experiments_lists_every_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiments"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 104


def test_oc_data_preparation_says_what_is_missing(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["data", "prepare", "oc22", "--scale", "smoke", "--out-dir", str(tmp_path)])
    assert code == 2 and "OC22" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
