"""The container, cluster and CI files refer to paths and commands that exist.

No Docker engine or Apptainer runs here, so these tests check what can be checked: every file
they copy is in the repository, and every `heartvec` command line they run parses with the real
argument parser (the lint step validates their syntax with hadolint, shellcheck and the compose
schema).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
import yaml

from heartvec.cli import commands, summary
from heartvec.settings import Settings
from heartvec_testing.volumes import REPO

DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))


def parse_heartvec(argv: list[str]) -> None:
    """Parse `heartvec SUBCOMMAND ...` with the subcommand's own parser (SystemExit if bad)."""
    registered = commands()
    assert argv[0] in registered, argv
    module = import_module(registered[argv[0]].module)
    module.build_parser().parse_args(argv[1:])


def test_ci_runs_make_test() -> None:
    lines = (REPO / ".ci/run").read_text().splitlines()
    assert "make test" in lines


def dockerfile_instructions(dockerfile: Path, instruction: str) -> list[str]:
    """The arguments of every top-level `INSTRUCTION ...` line (not a HEALTHCHECK's CMD)."""
    prefix = instruction + " "
    lines = dockerfile.read_text().splitlines()
    return [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]


def test_dockerfiles_copy_existing_paths() -> None:
    assert DOCKERFILES
    for dockerfile in DOCKERFILES:
        for arguments in dockerfile_instructions(dockerfile, "COPY"):
            if "--from=" in arguments:  # from an earlier build stage, not the repository
                continue
            *sources, _ = [word for word in arguments.split() if not word.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), (dockerfile.name, source)
        assert dockerfile_instructions(dockerfile, "ENTRYPOINT") == ['["heartvec"]'], dockerfile


def test_dockerfiles_default_to_real_commands() -> None:
    for dockerfile in DOCKERFILES:
        (cmd,) = dockerfile_instructions(dockerfile, "CMD")
        argv = json.loads(cmd)
        if argv != ["--help"]:
            parse_heartvec(argv)


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = re.escape(pattern.removeprefix("!"))
        body = body.replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        body = re.sub(r"\\\[(.*?)\\\]", r"[\1]", body)
        if any(re.fullmatch(body, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_what_the_images_need_and_nothing_else() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    packaged = [
        path.relative_to(REPO).as_posix()
        for source in ("shared", "services")
        for path in (REPO / source).rglob("*")
        if path.is_file()
        and not {"__pycache__", "heartvec.egg-info", "node_modules", "static"} & set(path.parts)
    ]
    assert "shared/heartvec/checkpoints/heartvec-small.pt" in packaged
    for path in ["pyproject.toml", "README.md", *packaged]:
        assert not dockerignore_excludes(path, patterns), path
    for path in [
        ".git/HEAD",
        ".venv/bin/python",
        "tests/test_packaging.py",
        "bench/results/reconstruct.json",
        "demo-output/volumes/phantom_s9000.nii.gz",
        "heartvec-data/uploads/a.nii.gz",
        "runs/small/checkpoint-last.pt",
        "shared/heartvec/__pycache__/volume.cpython-311.pyc",
        "shared/heartvec/scan.nii.gz",
        "services/trainer/heartvec_trainer/.mypy_cache/x.json",
        "services/api/web/node_modules/three/package.json",
        "services/api/heartvec_api/static/app.js",  # built inside the image instead
    ]:
        assert dockerignore_excludes(path, patterns), path


RESET = object()
"""Compose's `!reset` tag: the override file removes the value it is attached to."""


class ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus compose's `!reset` tag."""


ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


def load_compose(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((REPO / name).read_text(), Loader=ComposeLoader)
    return loaded


def merge_compose(base: Any, override: Any) -> Any:
    """Compose's merge of `-f base -f override`, as far as these files use it."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is RESET:
                merged.pop(key, None)
            else:
                merged[key] = merge_compose(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + override  # appended: an empty list alone removes nothing
    return override


def interpolate(text: str) -> str:
    """`${NAME:-default}` -> default, as compose does when NAME is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def service_command(service: dict[str, Any]) -> list[str]:
    """The `heartvec` argv of a service built from one of our Dockerfiles."""
    dockerfile = REPO / service["build"]["dockerfile"]
    assert "entrypoint" not in service
    if "command" in service:
        return [interpolate(str(part)) for part in service["command"]]
    (cmd,) = dockerfile_instructions(dockerfile, "CMD")
    argv: list[str] = json.loads(cmd)
    return argv


def test_compose_services_run_real_commands() -> None:
    services = load_compose("compose.yaml")["services"]
    built = {name: service for name, service in services.items() if "build" in service}
    assert {"api", "worker", "prepare"} <= set(built)
    for name, service in built.items():
        assert (REPO / service["build"]["dockerfile"]).is_file(), name
        argv = service_command(service)
        assert argv[0] in commands(), (name, argv)
        parse_heartvec(argv)
    assert service_command(built["api"])[0] == "serve"
    assert service_command(built["worker"]) == ["worker"]
    assert services["prepare"]["profiles"] == ["tools"]
    assert all("profiles" not in services[name] for name in ("api", "worker", "redis", "postgres"))


def environment_names(service: dict[str, Any]) -> set[str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return {entry.split("=", 1)[0] for entry in environment}
    return set(environment)


@pytest.mark.parametrize("name", ["compose.yaml", "compose.cpu.yaml"])
def test_compose_environment_names(name: str) -> None:
    text = (REPO / name).read_text()
    services = load_compose(name)["services"]
    postgres_names = {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"}
    interpolated = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert all(variable.startswith("HEARTVEC_") for variable in interpolated), interpolated
    settings = {f"HEARTVEC_{field.upper()}" for field in Settings.model_fields}
    for service_name, service in services.items():
        names = environment_names(service)
        if service_name == "postgres":
            assert names <= postgres_names, names
        else:
            assert names <= settings, (service_name, names - settings)


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY", re.IGNORECASE)
URL_PASSWORD = re.compile(r"://[^/\s:@]+:([^@\s]+)@")


def test_no_literal_password_in_container_files() -> None:
    for path in [REPO / "compose.yaml", REPO / "compose.cpu.yaml", *DOCKERFILES]:
        text = path.read_text()
        for password in URL_PASSWORD.findall(text):
            assert password.startswith("${"), (path.name, password)
        if path.suffix == ".yaml":
            for service in load_compose(path.name)["services"].values():
                environment = service.get("environment", {})
                for key, value in dict(environment).items():
                    if SECRET_NAME.search(key):
                        assert value is None or str(value).startswith("${"), (path.name, key)
        else:
            for line in text.splitlines():
                if line.startswith(("ENV ", "ARG ")):
                    assert not SECRET_NAME.search(line), (path.name, line)


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    devices: list[dict[str, Any]] = reservations.get("devices", [])
    return devices


def test_worker_reserves_a_gpu_except_in_the_cpu_override() -> None:
    base = load_compose("compose.yaml")
    cpu = merge_compose(base, load_compose("compose.cpu.yaml"))
    worker, cpu_worker = base["services"]["worker"], cpu["services"]["worker"]
    assert gpu_devices(worker) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["environment"]["HEARTVEC_DEVICE"] == "cuda"
    assert gpu_devices(cpu_worker) == []
    assert cpu_worker["environment"]["HEARTVEC_DEVICE"] == "cpu"
    assert all(
        gpu_devices(service) == [] for name, service in base["services"].items() if name != "worker"
    )


def test_api_and_worker_share_storage_and_wait_for_healthy_backends() -> None:
    services = load_compose("compose.yaml")["services"]
    for name in ("api", "worker"):
        service = services[name]
        assert service["environment"]["HEARTVEC_STORAGE_DIR"] == "/data"
        assert "storage:/data" in service["volumes"], name
        for backend in ("postgres", "redis"):
            assert service["depends_on"][backend] == {"condition": "service_healthy"}
            assert "healthcheck" in services[backend]


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


def test_console_script_passes_the_status_and_flushes_its_output() -> None:
    """`heartvec` exits without the interpreter's teardown (`heartvec.cli.entry`): what it
    printed to a pipe (block-buffered) still arrives, and the status is main's."""
    heartvec = str(Path(sys.executable).parent / "heartvec")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([heartvec, "labels"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("pulmonary_veins"), done
    bad = subprocess.run([heartvec, "no-such-tool"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown subcommand 'no-such-tool'" in bad.stderr


SERVICE_PACKAGES = ("heartvec_api", "heartvec_trainer", "heartvec_worker")


def test_shared_names_no_service_and_tests_import_no_conftest() -> None:
    """Layering: `shared/` never depends on `services/` (the services register their commands
    from their side), and the tests' helpers are a package, not conftest."""
    for path in (REPO / "shared").rglob("*.py"):
        text = path.read_text()
        assert not [p for p in SERVICE_PACKAGES if p in text], path
    for path in (REPO / "tests").glob("*.py"):
        assert not re.search(r"^\s*(from|import) conftest\b", path.read_text(), re.M), path


def test_every_registered_command_has_a_summary_and_a_parser() -> None:
    registered = commands()
    assert {"phantom", "prepare", "train", "reconstruct", "serve", "worker"} <= set(registered)
    for name, entry in registered.items():
        assert len(summary(entry)) > 10, name
        assert entry.attr == "main", name
