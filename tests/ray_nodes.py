"""A real multi-node Ray cluster on this machine, for tests: a head and worker nodes, each a
`ray start --block` process group of its own, on loopback addresses other than 127.0.0.1.

Ray rewrites only 127.0.0.1/localhost to the machine's address (with
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`, which a multi-node start needs); 127.0.0.2, .3 … are
kept, so every node advertises a loopback address and all traffic between nodes stays on `lo`.
Each node has its own short `--temp-dir` (Unix socket paths must stay under 107 characters),
so the cluster never touches `/tmp/ray` of other Ray instances on the machine, and no fixed
port is used: pytest-xdist workers can each start one.

A node is lost the way a machine is: `kill_node` SIGKILLs its process group (`ray start`,
raylet, agents) and the worker processes its raylet started (they run in groups of their own).

Ray's node-death detection is tuned down on these processes (`RAY_health_check_*`: a check a
second, five misses) so a lost node is declared dead within seconds, not the default ~15-65 s;
the timeout of one check stays at Ray's default 10 s, so a node that is only slow (this machine
runs at loads of 20-150 on 2 cores) is not declared dead.

Below the cluster, what drives it as a user does (`lawam` in fresh processes with RAY_ADDRESS)
and reads the outcome (what each node did, what was committed): shared by
`tests/test_ray_multinode.py` and `benchmarks/bench_multinode.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RAY_BIN = Path(sys.executable).parent / "ray"

# What the driver (the test process, a `lawam` child) needs to join: Ray 2.60 heads require a
# token (~/.ray/auth_token, shared by every process on the machine).
DRIVER_ENV = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}

NODE_ENV = {
    **DRIVER_ENV,
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",  # several nodes on one machine; for these processes only
    "RAY_health_check_initial_delay_ms": "2000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "5",
    "OMP_NUM_THREADS": "1",
}


def _pids(cmd: list[str]) -> list[int]:
    return [int(p) for p in subprocess.run(cmd, capture_output=True, text=True).stdout.split()]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Node:
    ip: str
    proc: subprocess.Popen
    temp_dir: Path
    args: list[str]
    node_id: str | None = None
    starts: int = 1

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class LoopbackCluster:
    """Head on 127.0.0.2; `add_worker()` adds 127.0.0.3, .4 …; `address` is what RAY_ADDRESS names."""

    cpus: int = 2
    object_store_bytes: int | None = None
    start_timeout_s: float = 180.0  # node start-up under a load of 100+ took 20-30 s
    nodes: list[Node] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")))
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.2:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment of a driver that joins this cluster."""
        return {**os.environ, **DRIVER_ENV, "RAY_ADDRESS": self.address}

    def _start(self, ip: str, args: list[str]) -> Node:
        node = Node(ip, self._popen(ip, args), self.root / ip.rsplit(".", 1)[1], args)
        self.nodes.append(node)
        return node

    def _popen(self, ip: str, args: list[str]) -> subprocess.Popen:
        sizes = ["--object-store-memory", str(self.object_store_bytes)] if self.object_store_bytes else []
        # --block keeps `ray start` in the foreground: each node is one process group we stop
        # ourselves, never with `ray stop` (which would kill every Ray on the machine).
        return subprocess.Popen(
            [str(RAY_BIN), "start", "--block", "--node-ip-address", ip, "--num-cpus", str(self.cpus),
             "--disable-usage-stats", "--temp-dir", str(self.root / ip.rsplit(".", 1)[1]), *sizes,
             "--resources", json.dumps({f"node:{ip}:only": 1}), *args],  # pins a task to this node, even after its loss
            env={**os.environ, **NODE_ENV}, start_new_session=True,
            stdout=open(self.root / f"{ip}.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )

    def start_head(self) -> Node:
        self.port = free_port("127.0.0.2")
        return self._start("127.0.0.2", ["--head", "--port", str(self.port), "--include-dashboard", "false",
                                         "--ray-client-server-port", str(free_port("127.0.0.2"))])

    def add_worker(self) -> Node:
        return self._start(f"127.0.0.{len(self.nodes) + 2}", ["--address", self.address])

    def live_worker(self) -> Node:
        """The live worker node, a new one started when an earlier run killed it."""
        workers = [n for n in self.nodes[1:] if n.alive()]
        if not workers:
            workers = [self.add_worker()]
            self.wait_alive(2)
        return workers[-1]

    def wait_alive(self, n: int) -> dict[str, str]:
        """Block until `n` nodes are alive (checked from a fresh driver); {ip: node id}."""
        probe = ("import json, ray; ray.init(log_to_driver=False); "
                 "print(json.dumps({n['NodeManagerAddress']: n['NodeID'] for n in ray.nodes() if n['Alive']}))")
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            # A probe that cannot reach the GCS yet retries inside `ray.init` for as long as it is
            # let: bounded, so a head that came up meanwhile (or a node to restart) is seen.
            try:
                out = subprocess.run([sys.executable, "-c", probe], env=self.env(), capture_output=True, text=True,
                                     timeout=max(10.0, min(45.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired as e:
                err = e.stderr or ""
                err = err if isinstance(err, str) else err.decode(errors="replace")
                out = subprocess.CompletedProcess(e.cmd, 1, "", err)
            if out.returncode == 0:
                alive = json.loads(out.stdout.strip().splitlines()[-1])
                if len(alive) >= n:
                    for node in self.nodes:
                        node.node_id = alive.get(node.ip, node.node_id)
                    return alive
            for node in self.nodes:
                # `ray start` gives a raylet 30 s (hard-coded) to register; at a load of 150 on 2
                # cores that was too little: the node is started again (its leftovers killed).
                if not node.alive() and node.starts < 3 and node.node_id is None:
                    self.kill_node(node)
                    node.proc, node.starts = self._popen(node.ip, node.args), node.starts + 1
            dead = [node.ip for node in self.nodes if not node.alive() and node.node_id is None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"Ray nodes not up after {self.start_timeout_s:.0f} s (exited: {dead}): "
                                   f"{out.stderr[-1500:]}\n{self.logs()}")
            time.sleep(1)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in self.root.glob("*.log"))

    def running(self, node: Node, title: str) -> bool:
        """Whether a worker process of `node` shows `title` (Ray's process titles:
        "ray::EncoderActor.encode", "ray::LabelActor", "ray::_decode_on_node" ...)."""
        for raylet in _pids(["pgrep", "-g", str(node.proc.pid), "raylet"]):
            for pid in _pids(["pgrep", "-P", str(raylet)]):
                try:
                    if title in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                        return True
                except OSError:
                    continue
        return False

    def kill_node(self, node: Node) -> None:
        """SIGKILL a node as a lost machine: its process group and its raylet's workers."""
        workers = [pid for raylet in _pids(["pgrep", "-g", str(node.proc.pid), "raylet"])
                   for pid in _pids(["pgrep", "-P", str(raylet)])]
        with contextlib.suppress(ProcessLookupError):  # a `ray start` that failed may have no group left
            os.killpg(node.proc.pid, signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        node.proc.wait()

    def stop(self) -> None:
        """Every node down (SIGTERM, then SIGKILL after 5 s) and the temp dirs gone."""
        for node in reversed(self.nodes):
            if node.alive():
                try:
                    os.killpg(node.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for node in reversed(self.nodes):
            try:
                node.proc.wait(timeout=5)  # `ray start --block` took 30 s and more to stop on SIGTERM
            except subprocess.TimeoutExpired:
                self.kill_node(node)
        shutil.rmtree(self.root, ignore_errors=True)


# Driving the cluster as a user does: `lawam` commands in fresh processes with RAY_ADDRESS.

TINY_LAM = {"model": {"width": 32, "heads": 2, "idm_layers": 1, "fdm_layers": 1, "code_dim": 4},
            "optim": {"steps": 4, "batch_size": 32, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0}}


def lawam(cluster: LoopbackCluster, *args: str) -> subprocess.Popen:
    """`lawam ARGS` joining `cluster`, in a session of its own (a signal to it reaches it alone)."""
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO,
                            env={**cluster.env(), "PYTHONPATH": str(REPO)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def video_corpus(root: Path, videos: Path, encoder: dict, fps: float) -> Path:
    """A corpus config of one `video_dir` source, its store at `root/store`."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "corpus.yaml"
    path.write_text(yaml.safe_dump({
        "sources": [{"id": "vids", "kind": "human", "format": "video_dir", "uri": str(videos)}],
        "encoder": encoder, "sampling": {"fps": fps}, "store": {"uri": str(root / "store")},
    }))
    return path


def wait_running(cluster: LoopbackCluster, node: Node, title: str, proc: subprocess.Popen, limit: float = 300,
                 progress=lambda: True) -> None:
    """Until `node` runs `title` for this run (`progress()`: the run has written something)."""
    deadline = time.monotonic() + limit
    while not (progress() and cluster.running(node, title)):
        assert proc.poll() is None, f"finished before {title} ran on {node.ip}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {title} on {node.ip} after {limit} s"
        time.sleep(0.05)


def per_node(prefix: str, text: str, sep: str) -> dict[str, list[int]]:
    """{node address: its numbers} from the CLI's per-node line: "PREFIX ADDR ... SEP ADDR ..."."""
    line = next(ln for ln in text.splitlines() if ln.strip().startswith(prefix)).strip()[len(prefix):]
    parts = [p.strip().split(None, 1) for p in line.split(sep)]
    return {ip.rstrip(":"): [int(n) for n in re.findall(r"\d+", rest)] for ip, rest in parts}


def error_lines(err: str) -> list[str]:
    """The CLI's one-line errors in a run's stderr."""
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def committed(store: Path) -> tuple[list[str], list[int]]:
    """Episode ids and frame counts committed in the store at `store` (none before its first commit)."""
    from pipeline.store import FeatureStore

    if not store.exists():
        return [], []
    eps = FeatureStore.open(str(store)).episodes()
    return eps["episode_id"].to_pylist(), eps["frames"].to_pylist()


def mislabelled(uri: str) -> list[str]:
    """Episodes of the store's one label set without exactly one label per frame pair ([]: all are)."""
    from pipeline.store import FeatureStore, LabelSet, list_label_sets

    store = FeatureStore.open(uri)
    (info,) = list_label_sets(store)
    labels = LabelSet.open(store, info.id)
    wrong = []
    for key in store.keys:
        z = labels.episode(key)
        if z is None or len(z) != len(store.features(key)) - labels.k_frames(key):
            wrong.append(key)
    return wrong
