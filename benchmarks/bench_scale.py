"""What each store operation costs as the corpus grows: 10 k, 100 k, 1 M episodes (DESIGN.md,
"Scale": every per-commit and per-open cost must grow with what changed, not with the corpus).

Synthetic episodes go through the real writer (`StoreWriter`): 4 frames of (1, 16) float16
features and 8 action rows each, so the index is what grows (`--realistic`: 16 x 384 features
per frame, as a DINOv2-S grid:4x4 store holds). Each store is built once and cached under
data/bench-scale/ (a new layout version builds anew), with a label set covering every episode.
Then, per size, each operation runs in a FRESH process (`--child OP`), as a CLI call or a
DataLoader worker would, and reports wall time and memory:

  open        FeatureStore.open(tip) and len(): what every reader, worker and actor pays
  catalog     pipeline.catalog.summarize (what `lawam catalog` prints)
  plan        StoreWriter.open + plan() of every episode's ref, unchanged (a no-op refresh)
  add         StoreWriter.open, +1,000 new episodes written, one commit (also into an EMPTY store:
              the aim is that adding to the big store costs at most 2x that)
  label       label_store (in-process, a trivial labeler) of the 1,000 new episodes: plan, pairs,
              one label commit
  loader      PairDataset + pair_loader(workers=2): epoch plan and first batch; peak RSS of the
              loader process and of each worker
  verify      verify_store of the tip (reads every chunk: O(corpus) by nature)
  gc          gc_store(older_than=0) after add and label

Memory: `rss_mb` is the process's resident set after imports, before the operation; `peak_mb`
its high-water mark (VmHWM) after it; `delta_mb` their difference (what the operation holds).
Mutating operations (add, label, gc) run on a copy of the cached store.

Figures measured on a loaded machine mean something as side-by-side ratios within one run
(`uptime`'s load is recorded in the JSON).

    nice -n 10 python -m benchmarks.bench_scale [--sizes 10000,100000,1000000] [--tag after]
    nice -n 10 python -m benchmarks.bench_scale --sizes 100000 --realistic
    git worktree add /tmp/lawam-before <commit>   # the same figures for an older lawam, op by op
    nice -n 10 python -m benchmarks.bench_scale --baseline /tmp/lawam-before --tag compare

Writes benchmarks/results/scale-<tag>.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "bench-scale"
FRAMES, FPS, ACTION_ROWS = 4, 5.0, 8
BUILD_COMMIT = 100_000  # episodes per commit while building a cached store
ADD = 1000
SET_ID = "lam-000000000000"
K_SECONDS = 0.2  # one frame at 5 fps: 3 pairs per episode


def _encoder():
    from schemas.identity import EncoderIdentity

    return EncoderIdentity(model="bench", weights="random-init:seed=0", image_size=32, mean=(0.5,) * 3,
                           std=(0.5,) * 3, tokens="cls", layer=-1)


def _ref(i: int, content: str = "v1"):
    from schemas.records import EpisodeRef

    return EpisodeRef(source=f"src{i % 4}", episode_id=f"ep{i:08d}", kind="robot", uri=f"/bench/src{i % 4}/{i}.mp4",
                      content_hash=f"{content}-{i}", instruction=f"task {i % 10}")


def _params():
    from schemas.identity import SamplingParams

    return SamplingParams(fps=FPS, size=32)


class _Episode:
    """The same small arrays for every episode (content is not what is measured)."""

    def __init__(self, realistic: bool):
        import numpy as np

        from schemas.records import ActionTrack

        shape = (FRAMES, 16, 384) if realistic else (FRAMES, 1, 16)
        rng = np.random.default_rng(0)
        self.features = rng.normal(size=shape).astype(np.float16)
        self.timestamps = np.arange(FRAMES) / FPS
        at = np.arange(ACTION_ROWS) / (ACTION_ROWS / FRAMES * FPS)
        self.track = ActionTrack(at, rng.normal(size=(ACTION_ROWS, 2)).astype(np.float32))


def write_episodes(writer, first: int, n: int, ep: _Episode) -> None:
    params = _params()
    for i in range(first, first + n):
        ref = _ref(i)
        writer.start_episode(ref, params)
        writer.append_frames(ref, ep.features, ep.timestamps)
        writer.finish_episode(ref, ep.track, fps=FPS)


class BenchLabeler:
    """A labeler whose model is a difference of features: the store's label path, not a model, is measured."""

    set_id = SET_ID
    k_seconds = K_SECONDS
    attrs = {"dim": 4, "k_seconds": K_SECONDS, "lam": {"dir": "bench"}}

    @property
    def encoder(self):
        return _encoder()

    def __call__(self):
        import numpy as np

        def fn(a, b):
            d = (b.astype(np.float32) - a.astype(np.float32)).reshape(len(a), -1)
            return d[:, :4]

        return fn


# -- children: one operation per fresh process ------------------------------------------
def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _hwm_mb(pid: int, key: str = "VmHWM") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def child(op: str, uri: str, n: int, realistic: bool) -> dict:
    """Run one operation on the store at `uri` (of `n` episodes); the figures as a dict."""
    from pipeline.store import FeatureStore, StoreWriter

    out: dict = {}
    # What the op imports, before its floor `rss_mb` is read (torch for label and loader only).
    if op in ("label", "loader"):
        import model.data  # noqa: F401
        import pipeline.label  # noqa: F401
    import pandas  # noqa: F401 - pyarrow imports it on first use (~0.5 s): a library's import, not the op

    import pipeline.catalog  # noqa: F401
    import pipeline.store.maintenance  # noqa: F401
    import pipeline.store.verify  # noqa: F401

    rss = _status("VmRSS") / 1024
    t = time.perf_counter()
    if op == "open":
        store = FeatureStore.open(uri)
        out["episodes"] = len(store)
    elif op == "catalog":
        summary = pipeline.catalog.summarize(uri)
        out["episodes"] = sum(s.episodes for s in summary.sources)
    elif op == "plan":
        refs = [_ref(i) for i in range(n)]
        params = _params()
        out["refs_s"] = time.perf_counter() - t
        rss = _status("VmRSS") / 1024  # the refs are the sources' work and memory, not the plan's
        t = time.perf_counter()
        with StoreWriter.open(uri, encoder=_encoder()) as w:
            out["writer_open_s"] = time.perf_counter() - t
            t1 = time.perf_counter()
            plan = w.plan(refs, lambda ref: params)
            out["plan_only_s"] = time.perf_counter() - t1
        assert not plan.todo and len(plan.skipped) == n, (len(plan.todo), len(plan.skipped))
    elif op == "add":
        ep = _Episode(realistic)
        with StoreWriter.open(uri, encoder=_encoder()) as w:
            out["writer_open_s"] = time.perf_counter() - t
            t1 = time.perf_counter()
            write_episodes(w, n, ADD, ep)
            out["write_s"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            out["version"] = w.commit(f"bench: +{ADD}")
            out["commit_s"] = time.perf_counter() - t1
        assert out["version"]
    elif op == "label":
        from pipeline.label import label_store

        report = label_store(uri, BenchLabeler(), use_ray=False, progress=False)
        out["labelled"] = report.episodes
        assert report.episodes == ADD, report
    elif op == "loader":
        from model.data import PairDataset, pair_loader
        from pipeline.store.pairs import PairQuery

        store = FeatureStore.open(uri)
        out["open_s"] = time.perf_counter() - t
        ds = PairDataset(store, PairQuery(k_seconds=K_SECONDS, horizon=2), batch_size=256)
        loader = pair_loader(ds, workers=2)
        it = iter(loader)
        batch = next(it)
        out["pairs"] = int(len(batch["t"]))
        out["first_batch_s"] = time.perf_counter() - t
        workers = [p for p in _descendants(os.getpid()) if _hwm_mb(p) > 0]
        hwm = sorted(((_hwm_mb(p), _hwm_mb(p, "RssAnon")) for p in workers), reverse=True)[:2]
        out["worker_peak_mb"] = [h for h, _ in hwm]  # the two workers (the forkserver is smaller)
        out["worker_anon_mb"] = [a for _, a in hwm]  # of it their own (not file pages shared with others)
        del it, loader
    elif op == "verify":
        from pipeline.store.verify import verify_store

        report = verify_store(uri, progress=False)
        assert report.ok, report.problems[:3]
        out["episodes"] = report.episodes
    elif op == "gc":
        from datetime import timedelta

        from pipeline.store.maintenance import gc_store

        report = gc_store(uri, older_than=timedelta(0))
        out["expired"], out["bytes_deleted"] = report.expired, report.bytes_deleted
    else:
        raise SystemExit(f"unknown op {op}")
    out["s"] = time.perf_counter() - t
    out["rss_mb"] = round(rss, 1)
    out["peak_mb"] = round(_status("VmHWM") / 1024, 1)
    out["delta_mb"] = round(out["peak_mb"] - rss, 1)
    return out


def build(uri: str, n: int, realistic: bool) -> dict:
    """A store of `n` episodes (commits of BUILD_COMMIT) and a label set over all of them."""
    import numpy as np

    from pipeline.store import FeatureStore, LabelWriter, StoreWriter

    t = time.perf_counter()
    ep = _Episode(realistic)
    done = 0
    while done < n:
        step = min(BUILD_COMMIT, n - done)
        with StoreWriter.open(uri, encoder=_encoder(), chunk_frames=64) as w:
            write_episodes(w, done, step, ep)
            w.commit(f"bench build: {done}..{done + step}")
        done += step
        print(f"  built {done:,} episodes ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
    store = FeatureStore.open(uri)
    z = np.zeros((FRAMES - 1, 4), np.float32)
    hashes = store.episodes()["content_hash"].to_pylist()
    with LabelWriter.open(uri, SET_ID, BenchLabeler.attrs) as lw:
        for i, (key, h) in enumerate(zip(list(store.keys), hashes, strict=True)):
            lw.put(str(key), h, z, 1)
            if i % 20000 == 19999:
                lw._flush()  # the layout-1 LabelWriter re-sums its buffer on every put (quadratic)
        lw.commit("bench build: labels")
    return {"build_s": time.perf_counter() - t}


# -- driver ------------------------------------------------------------------------------
def _run_child(code: Path, *args: str) -> dict:
    """One child process of the bench_scale.py in the checkout `code` (this one or --baseline)."""
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_USAGE_STATS_ENABLED": "0"}
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_scale", *args], capture_output=True, text=True,
                         env=env, cwd=code, timeout=6 * 3600)
    if res.returncode != 0:
        raise SystemExit(f"child {args} of {code} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _layout(code: Path) -> int:
    res = subprocess.run([sys.executable, "-c", "from schemas.tables import STORE_LAYOUT_VERSION as v; print(v)"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(code)}, cwd=code,
                         check=True)
    return int(res.stdout.strip())


def cached_store(code: Path, n: int, realistic: bool) -> Path:
    """The store of `n` episodes written by `code`'s writer, built once (per layout)."""
    path = DATA / f"L{_layout(code)}-{'real' if realistic else 'tiny'}-{n}"
    if not (path / "done").exists():
        shutil.rmtree(path, ignore_errors=True)
        print(f"building {path} ...", file=sys.stderr, flush=True)
        info = _run_child(code, "--build", str(path), "--n", str(n), *(["--realistic"] if realistic else []))
        (path / "done").write_text(json.dumps(info))
    return path


def _du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _say(code: str, n: int, op: str, r: dict) -> None:
    print(f"{code:8} {n:>9,} {op:8} {r['s']:8.2f} s  peak {r['peak_mb']:7.0f} MB (+{r['delta_mb']:.0f})",
          file=sys.stderr, flush=True)


def measure(codes: dict[str, Path], sizes: list[int], ops: list[str], realistic: bool) -> dict:
    """Every op of every size, the codes side by side (op by op, so they share the machine's load)."""
    flag = ["--realistic"] if realistic else []
    out: dict = {name: {"layout": _layout(code), "sizes": {}} for name, code in codes.items()}
    scratch = DATA / "scratch"
    if "add" in ops:  # the reference: the same +1,000 into an empty store
        for name, code in codes.items():
            shutil.rmtree(scratch, ignore_errors=True)
            out[name]["empty_add"] = _run_child(code, "--child", "add", "--store", str(scratch), "--n", "0", *flag)
            out[name]["empty_label"] = _run_child(code, "--child", "label", "--store", str(scratch), "--n", "0", *flag)
            _say(name, 0, "add", out[name]["empty_add"])
            _say(name, 0, "label", out[name]["empty_label"])
    for n in sizes:
        paths = {name: cached_store(code, n, realistic) for name, code in codes.items()}
        for name, path in paths.items():
            out[name]["sizes"][n] = {"store_mb": round(_du_mb(path), 1),
                                     "build": json.loads((path / "done").read_text())}
        for op in ("open", "catalog", "plan", "loader", "verify"):
            if op in ops:
                for name, code in codes.items():
                    r = _run_child(code, "--child", op, "--store", str(paths[name]), "--n", str(n), *flag)
                    out[name]["sizes"][n][op] = r
                    _say(name, n, op, r)
        for name, code in codes.items():
            if any(op in ops for op in ("add", "label", "gc")):
                shutil.rmtree(scratch, ignore_errors=True)
                shutil.copytree(paths[name], scratch)
                for op in ("add", "label", "gc"):
                    if op in ops:
                        r = _run_child(code, "--child", op, "--store", str(scratch), "--n", str(n), *flag)
                        out[name]["sizes"][n][op] = r
                        _say(name, n, op, r)
                shutil.rmtree(scratch, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="episode counts, comma-separated")
    ap.add_argument("--ops", default="open,catalog,plan,add,label,loader,verify,gc")
    ap.add_argument("--realistic", action="store_true", help="16 x 384 float16 features per frame")
    ap.add_argument("--baseline", type=Path, help="a checkout of an older lawam (e.g. `git worktree add` of a commit): "
                    "every op runs with it too, op by op beside this one, on stores its own writer built")
    ap.add_argument("--tag", default="run", help="results go to benchmarks/results/scale-TAG.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.store, args.n, args.realistic)))
        return
    if args.build:
        print(json.dumps(build(args.build, args.n, args.realistic)))
        return
    codes = {"before": args.baseline.resolve()} if args.baseline else {}
    codes["after" if args.baseline else "this"] = REPO
    load = os.getloadavg()
    results = measure(codes, [int(s) for s in args.sizes.split(",")], args.ops.split(","), args.realistic)
    results = {"load": load, "load_after": os.getloadavg(), "realistic": args.realistic, "codes": results}
    out = REPO / "benchmarks" / "results" / f"scale-{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print_table(results)
    print(f"wrote {out}")


OPS = ("open", "catalog", "plan", "add", "label", "loader", "verify", "gc")


def print_table(results: dict) -> None:
    """Seconds / peak MB per op and size, for each code; then what the aims look at."""
    print(f"load {results['load'][0]:.1f} -> {results['load_after'][0]:.1f} (2 cores)")
    for name, res in results["codes"].items():
        print(f"\n{name} (layout {res['layout']})" + (
            f": +{ADD} into an empty store {res['empty_add']['s']:.2f} s, labelling them "
            f"{res['empty_label']['s']:.2f} s" if "empty_add" in res else ""))
        print("| episodes | " + " | ".join(OPS) + " |")
        print("|---|" + "---|" * len(OPS))
        for n, row in res["sizes"].items():
            cells = ["-" if op not in row else f"{row[op]['s']:.2f} s, {row[op]['peak_mb']:.0f} MB" for op in OPS]
            print(f"| {int(n):,} | " + " | ".join(cells) + " |")
        for n, row in res["sizes"].items():
            notes = [f"store {row['store_mb']:.0f} MB"]
            if "add" in row and "empty_add" in res:
                notes.append(f"add = {row['add']['s'] / res['empty_add']['s']:.2f}x into empty")
            if "open" in row:
                notes.append(f"open holds {row['open']['delta_mb']:.0f} MB")
            if "loader" in row:
                notes.append(f"loader workers peak {', '.join(f'{m:.0f}' for m in row['loader']['worker_peak_mb'])} MB")
                if "worker_anon_mb" in row["loader"]:
                    anon = row['loader']['worker_anon_mb']
                    notes.append(f"their own (anon) {', '.join(f'{m:.0f}' for m in anon)} MB")
            if "plan" in row:
                notes.append(f"plan alone {row['plan']['plan_only_s']:.2f} s (writer open "
                             f"{row['plan']['writer_open_s']:.2f} s)")
            print(f"  {int(n):,}: " + "; ".join(notes))


if __name__ == "__main__":
    main()
