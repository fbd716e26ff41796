"""A labelling run in a fresh process, slowed down so that a test can kill it mid-way."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_slow_label_run(uri: str, lam_dir: Path, marker: Path, *, use_ray: bool, timeout: float,
                         poll: float) -> subprocess.Popen:
    """`label_store(uri, lam_dir)` in a new process (its own session) whose model sleeps 0.5 s per
    batch where it labels — on the Ray actor with `use_ray` (not in the driver's probe), else in
    that process — and touches `marker` there; returned once the marker exists."""
    where = "ray.is_initialized()" if use_ray else "True"
    actors = ", num_actors=1" if use_ray else ""
    code = (
        "import time\n"
        f"{'import ray' if use_ray else ''}\n"
        "from model.labeler import IdmLabeler\n"
        "from pipeline.label import label_store\n"
        "class Slow(IdmLabeler):\n"
        "    def __call__(self):\n"
        "        fn = super().__call__()\n"
        "        def slow(a, b):\n"
        f"            if {where}:\n"
        f"                open({str(marker)!r}, 'w').close()\n"
        "                time.sleep(0.5)\n"
        "            return fn(a, b)\n"
        "        return slow\n"
        f"label_store({uri!r}, Slow({str(lam_dir)!r}), use_ray={use_ray}{actors}, pairs_per_task=1, batch_pairs=4,\n"
        "            progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "labelling never started"
        time.sleep(poll)
    return proc
