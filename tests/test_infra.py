"""The deployment files in infra/: they parse, name what they must, and every command they
run is a real entry point and subcommand, with real options, in this environment."""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[1] / "infra"
BIN = Path(sys.executable).parent


def _click_command(group, words: list[str]):
    """The (click or typer) subcommand `words` name, and the words after it."""
    cmd = group
    while hasattr(cmd, "commands") and words and words[0] in cmd.commands:
        cmd, words = cmd.commands[words[0]], words[1:]
    assert not hasattr(cmd, "commands"), f"no such subcommand: {words[:1]}"
    return cmd, words


def _flags(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("-")]


@functools.cache
def _prefect_help(sub: str) -> str:
    exe = BIN / "prefect" if (BIN / "prefect").exists() else shutil.which("prefect")
    assert exe, "the `prefect` entry point is not installed"
    result = subprocess.run([str(exe), *sub.split(), "--help"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    assert result.returncode == 0, (sub, result.stderr[-2000:])
    return result.stdout


def check_command(argv: list[str] | str) -> None:
    """`argv` runs an installed entry point's real subcommand with options it has."""
    words = shlex.split(argv) if isinstance(argv, str) else list(argv)
    exe, rest = words[0], words[1:]
    assert (BIN / exe).exists() or shutil.which(exe), f"`{exe}` is not installed"
    if exe == "lawam":
        import typer.main

        from flows.cli import app

        cmd, rest = _click_command(typer.main.get_command(app), rest)
    elif exe == "ray":
        from ray.scripts.scripts import cli

        cmd, rest = _click_command(cli, rest)
    elif exe == "prefect":
        sub = " ".join(w for w in rest[:2] if not w.startswith("-"))
        text = _prefect_help(sub)
        for flag in _flags(rest):
            assert flag in text, f"`prefect {sub}` has no option {flag}"
        return
    else:
        raise AssertionError(f"unexpected command {exe!r}")
    opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for flag in _flags(rest):
        assert flag in opts, f"`{exe} {cmd.name}` has no option {flag}"


def test_compose_file_runs_real_commands():
    compose = yaml.safe_load((INFRA / "prefect" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "server", "scheduler", "worker"} <= set(services)
    server = services["server"]
    assert server["ports"] == ["127.0.0.1:4200:4200"]  # loopback only
    assert "postgresql+asyncpg://" in server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    check_command(server["command"])
    for name in ("scheduler", "worker"):
        svc = services[name]
        assert svc["environment"]["PREFECT_API_URL"] == "http://server:4200/api" and "server" in svc["depends_on"]
        check_command(svc["entrypoint"])
    worker = services["worker"]["entrypoint"]
    pool_type = worker[worker.index("--type") + 1]
    from prefect.workers.base import BaseWorker

    assert BaseWorker.get_worker_class_from_type(pool_type) is not None, f"no worker type {pool_type!r}"
    assert "next issue" not in (INFRA / "prefect" / "docker-compose.yml").read_text()


def test_ray_cluster_launcher_config_is_valid():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))  # what `ray up` does first: defaults filled, Ray's schema checked
    with pytest.raises(Exception, match="head_start_ray_comands"):  # and the schema does catch a typo
        validate_config(prepare_config({**cfg, "head_start_ray_comands": []}))
    assert cfg["provider"]["type"] == "local"
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        check_command(cmd)
    assert any("--head" in c for c in cfg["head_start_ray_commands"])


def test_kuberay_cluster_names_real_ray_start_options():
    import ray

    cr = yaml.safe_load((INFRA / "ray" / "raycluster.yaml").read_text())
    assert cr["apiVersion"] == "ray.io/v1" and cr["kind"] == "RayCluster"
    spec = cr["spec"]
    assert spec["rayVersion"] == ray.__version__  # the image's Ray, pinned in constraints.txt
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        # KubeRay runs `ray start` with rayStartParams as its options
        check_command(["ray", "start", *(f"--{k}={v}" for k, v in group["rayStartParams"].items())])
        [container] = group["template"]["spec"]["containers"]
        assert container["image"] == "lawam:latest"
    assert spec["workerGroupSpecs"][0]["minReplicas"] <= spec["workerGroupSpecs"][0]["maxReplicas"]


def test_dockerfile_copies_what_exists_and_runs_lawam():
    text = (INFRA / "Dockerfile").read_text()
    root = INFRA.parent
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (root / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    assert 'ENTRYPOINT ["lawam"]' in text


@pytest.mark.parametrize("argv", ["ray start --no-such-flag", "lawam serve --no-such-flag", "lawam no-such-command",
                                  "prefect worker start --no-such-flag"])
def test_the_check_catches_a_wrong_command(argv):
    with pytest.raises(AssertionError):
        check_command(argv)
