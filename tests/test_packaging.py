"""The container, cluster and CI files refer to paths and commands that exist.

No Docker engine or Apptainer runs here, so these tests check what can be checked: every file
they copy is in the repository, and every `heartvec` command line they run parses with the real
argument parser (the lint step validates their syntax with hadolint, shellcheck and the compose
schema).
"""

from __future__ import annotations

import re
import shlex
from importlib import import_module

import pytest
import yaml
from conftest import REPO

from heartvec.cli import SUBCOMMANDS


def parse_heartvec(argv: list[str]) -> None:
    """Parse `heartvec SUBCOMMAND ...` with the subcommand's own parser (SystemExit if bad)."""
    assert argv[0] in SUBCOMMANDS, argv
    module = import_module(SUBCOMMANDS[argv[0]][0])
    module.build_parser().parse_args(argv[1:])


def test_ci_runs_make_test() -> None:
    lines = (REPO / ".ci/run").read_text().splitlines()
    assert "make test" in lines


def test_dockerfile_copies_existing_paths() -> None:
    for dockerfile in (REPO / "docker").glob("*.Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                *sources, _ = line.split()[1:]
                for source in sources:
                    assert (REPO / source).exists(), (dockerfile.name, source)
        assert 'ENTRYPOINT ["heartvec"]' in dockerfile.read_text()


def test_apptainer_definition_copies_existing_paths() -> None:
    text = (REPO / "apptainer/trainer.def").read_text()
    files = text.split("%files", 1)[1].split("%", 1)[0]
    sources = [line.split()[0] for line in files.splitlines() if line.strip()]
    assert sources and all((REPO / s).exists() for s in sources)


def test_compose_command_parses() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        assert (REPO / service["build"]["dockerfile"]).is_file(), name
        command = [re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", part) for part in service["command"]]
        parse_heartvec(command)


def test_sbatch_runs_a_real_command() -> None:
    text = (REPO / "apptainer/prepare.sbatch").read_text()
    call = text.split('"$IMAGE" \\\n', 1)[1].replace("\\\n", " ")
    values = {"LABELS": "default", "SLURM_CPUS_PER_TASK:-1": "4", "TASK": "3", "TASKS": "16"}
    for name, value in sorted(values.items(), key=lambda item: -len(item[0])):
        call = call.replace(f"${{{name}}}", value).replace(f"${name}", value)
    argv = shlex.split(call)
    assert argv[0] == "heartvec"
    parse_heartvec(argv[1:])
    assert "--shard" in argv and argv[argv.index("--shard") + 1] == "3/16"


def test_makefile_demo_uses_real_subcommands() -> None:
    makefile = (REPO / "Makefile").read_text()
    demo = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    calls = [
        line.split("$(BIN)/heartvec ", 1)[1] for line in demo.splitlines() if "heartvec " in line
    ]
    assert len(calls) >= 3
    for call in calls:
        parse_heartvec(shlex.split(call.replace("$(DEMO_DIR)", "demo-output")))


@pytest.mark.parametrize("command", ["make demo", "make test"])
def test_readme_gives_the_two_commands(command: str) -> None:
    assert command in (REPO / "README.md").read_text()
