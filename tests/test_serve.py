"""Schedules on a real Prefect server: `lawam serve` registers a corpus's deployments and
runs them; a triggered refresh completes and advances the store; two refreshes of one store
triggered at once run one after the other and leave it consistent. The production setup too:
the server on a real PostgreSQL, configured with the very variables
`infra/prefect/docker-compose.yml` gives it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from pipeline.store import FeatureStore
from tests.datasets import make_video
from tests.postgres import Postgres

REPO = Path(__file__).resolve().parents[1]
CORPUS = """name: cams
sources:
  - {id: cam, kind: human, format: video_dir, uri: v}
encoder: {model: vit_tiny_patch16_224, image_size: 32, tokens: mean, batch_size: 8, runtime: torch, precision: fp32}
sampling: {fps: 5}
store: {uri: store}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextmanager
def prefect_server(home: Path, **settings: str) -> Iterator[dict]:
    """A real `prefect server start` on a free loopback port, PREFECT_HOME `home` (SQLite there
    unless `settings` names another database); yields its API URL and the client environment."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", **settings}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prefect server did not start"
            time.sleep(0.5)
        yield {"url": url, "env": {**env, "PREFECT_API_URL": url}}
    finally:
        _stop(server)
        log.close()


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real `prefect server start` on loopback, SQLite in a temporary PREFECT_HOME."""
    with prefect_server(tmp_path_factory.mktemp("prefect")) as api:
        yield api


@pytest.fixture(scope="module")
def prefect_on_postgres(tmp_path_factory):
    """The compose file's server on a real PostgreSQL started here (tests/postgres.py): its
    `postgres` service's user, password and database, and its `server` service's environment
    with the database host pointed at this loopback port instead of the compose network."""
    compose = yaml.safe_load((REPO / "infra/prefect/docker-compose.yml").read_text())
    db, settings = compose["services"]["postgres"]["environment"], dict(compose["services"]["server"]["environment"])
    pg = Postgres(db["POSTGRES_USER"], db["POSTGRES_PASSWORD"], db["POSTGRES_DB"])
    t0 = time.monotonic()
    pg.start()
    try:
        compose_url = settings["PREFECT_API_DATABASE_CONNECTION_URL"]
        here = compose_url.replace("@postgres:5432/", f"@127.0.0.1:{pg.port}/")
        assert here == pg.url("postgresql+asyncpg"), compose_url
        settings["PREFECT_API_DATABASE_CONNECTION_URL"] = here
        with prefect_server(tmp_path_factory.mktemp("prefect-pg"), **settings) as api:
            yield {**api, "pg": pg, "healthy_after_s": time.monotonic() - t0}
    finally:
        pg.stop()


def _serve(tmp_path: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "serve", str(tmp_path / "corpus.yaml"), *args],
                          capture_output=True, text=True, env={**env, "NO_COLOR": "1"}, cwd=REPO, timeout=120)


def test_serve_needs_a_server_and_says_how_to_get_one(tmp_path):
    (tmp_path / "corpus.yaml").write_text(CORPUS)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    for url in (None, f"http://127.0.0.1:{_free_port()}/api"):
        result = _serve(tmp_path, {**env, "PREFECT_API_URL": url} if url else env)
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
        assert "prefect server start" in lines[0] and "PREFECT_API_URL" in lines[0]
        assert (url is None and "not set" in lines[0]) or (url and url in lines[0] and "not reachable" in lines[0])


def _wait_for_deployment(client, name: str, timeout_s: float = 180):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.read_deployment_by_name(name)
        except Exception:  # noqa: BLE001 - ObjectNotFound until `lawam serve` registered it
            assert time.monotonic() < deadline, f"deployment {name} was not registered"
            time.sleep(1)


def _wait_final(client, run_ids, timeout_s: float = 420):
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [client.read_flow_run(i) for i in run_ids]
        if all(r.state.is_final() for r in runs):
            return runs
        assert time.monotonic() < deadline, [r.state for r in runs]
        time.sleep(1)


def _ingest_span(client, flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    [run] = [t for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
             if t.task_key.startswith("ingest") or t.name.startswith("ingest")]
    return run.start_time, run.end_time


@contextmanager
def served(tmp_path: Path, api: dict, ray_local, clips: int) -> Iterator[object]:
    """`lawam serve` of a one-source corpus (`clips` short videos) in the background, against the
    server `api`, its runs on the session's Ray; yields a client of that server."""
    from prefect.client.orchestration import SyncPrefectClient

    (tmp_path / "corpus.yaml").write_text(CORPUS)
    for i in range(clips):
        make_video(tmp_path / "v" / f"clip{i}.mp4", n_frames=20, fps=10, seed=i)
    env = {**api["env"], "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "OMP_NUM_THREADS": "1", "PREFECT_LOGGING_LEVEL": "INFO"}
    with open(tmp_path / "serve.log", "w") as log:
        serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", str(tmp_path / "corpus.yaml"),
                                  "--cron", "0 3 * * *"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            with SyncPrefectClient(api["url"]) as client:
                yield client
        finally:
            _stop(serve)


@pytest.mark.long
def test_a_served_refresh_runs_on_trigger_one_per_store_at_a_time(prefect_api, ray_local, tmp_path):
    with served(tmp_path, prefect_api, ray_local, clips=2) as client:
        deployment = _wait_for_deployment(client, "refresh_corpus/refresh-cams")
        [schedule] = deployment.schedules
        assert schedule.schedule.cron == "0 3 * * *" and schedule.active
        _wait_for_deployment(client, "lawam_chain/chain-cams")

        # two triggers of the refresh at once, on one store
        runs = [client.create_flow_run_from_deployment(deployment.id) for _ in range(2)]
        a, b = _wait_final(client, [r.id for r in runs])
        assert a.state.is_completed() and b.state.is_completed(), (tmp_path / "serve.log").read_text()[-4000:]
        # one after the other: the ingest of one began after the other's had ended
        (s1, e1), (s2, e2) = sorted(_ingest_span(client, r.id) for r in (a, b))
        assert e1 <= s2, ((s1, e1), (s2, e2))
    store = FeatureStore.open(str(tmp_path / "store"))
    keys = [f"{s}/{e}" for s, e in zip(store.episodes()["source"].to_pylist(),
                                       store.episodes()["episode_id"].to_pylist(), strict=True)]
    assert sorted(keys) == ["cam/clip0.mp4", "cam/clip1.mp4"]  # no duplicates, none lost
    ingests = [v for v in store.versions() if v.message.startswith("ingest")]
    assert len(ingests) == 1 and store.version == ingests[0].id  # the first added both; the second found them
    log = (tmp_path / "serve.log").read_text()
    assert log.count("holding the refresh slot") == 2 and "+2 episodes" in log and "+0 episodes" in log, log[-4000:]


@pytest.mark.long
def test_the_compose_setup_on_postgresql_runs_a_served_refresh_to_completed(prefect_on_postgres, ray_local, tmp_path):
    assert prefect_on_postgres["healthy_after_s"] < 60  # initdb + pg_ctl + createdb + prefect server start
    with served(tmp_path, prefect_on_postgres, ray_local, clips=1) as client:
        deployment = _wait_for_deployment(client, "refresh_corpus/refresh-cams")
        run = client.create_flow_run_from_deployment(deployment.id)
        [done] = _wait_final(client, [run.id])
        assert done.state.is_completed(), (tmp_path / "serve.log").read_text()[-4000:]
    store = FeatureStore.open(str(tmp_path / "store"))
    assert store.episodes()["episode_id"].to_pylist() == ["clip0.mp4"]
    # the run lives in PostgreSQL: Prefect's own tables there hold it, completed
    pg = prefect_on_postgres["pg"]
    assert pg.psql(f"select state_type from flow_run where id = '{run.id}'").strip() == "COMPLETED"
    assert pg.psql("select name from deployment order by name").split() == ["chain-cams", "refresh-cams"]
