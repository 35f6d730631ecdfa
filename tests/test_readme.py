"""Every shell command in README.md runs as written: `snakemake` commands as dry runs, `make`
targets as `make -n`, `dens` commands for real, in a copy of the repository (with the README's
own example experiment file saved where its follow-up command expects it)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from pipeline_copy import REPO, copy_repository, environment

README = (REPO / "README.md").read_text()


def shell_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            if line.strip():
                commands.append(line)
    return commands


def as_run(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    if words[0] == "snakemake" and "-n" not in words:
        return ["snakemake", "-n", *words[1:]]
    if words[0] == "make":
        return ["make", "-n", *words[1:]]
    return words


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_repository(tmp_path_factory.mktemp("readme"))
    section = README[README.index("## Add your own experiment") :]
    example = section[section.index("```yaml") + len("```yaml\n") : section.index("```\n", 8)]
    (root / "my_experiments.yaml").write_text(example)
    return root


def test_the_readme_has_the_commands_a_user_needs() -> None:
    words = {shlex.split(command, comments=True)[0] for command in shell_commands()}
    assert {"make", "snakemake", "dens"} <= words


@pytest.mark.parametrize("command", shell_commands())
def test_readme_command_runs(command: str, checkout: Path) -> None:
    result = subprocess.run(
        as_run(command), cwd=checkout, env=environment(), capture_output=True, text=True
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
