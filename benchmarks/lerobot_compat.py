"""Check that the real `lerobot` library loads our robot sample corpus and agrees with what we wrote.

Runs only where `lerobot` is installed (it pins its own torch, so a throwaway venv, never the
repo's), against a corpus rendered beforehand with the repo's environment:

    .venv/bin/lawam samples /tmp/lr_samples --tasks reach-v3,push-v3 --episodes-per-task 3 --image-size 64
    python3 -m venv /tmp/lrv && /tmp/lrv/bin/pip install lerobot
    /tmp/lrv/bin/python benchmarks/lerobot_compat.py /tmp/lr_samples/robot

Checks, each printed with its numbers:
  load        `LeRobotDataset(repo_id, root=...)` opens it (info, episodes, tasks, stats, data)
  clock       rows and videos share one rate (lerobot decodes a row's frame at the row's
              timestamp); within every episode, row timestamps step by 1/fps (lerobot's tolerance)
  rows        every row loads through `__getitem__`, its video frames decoded at the row's
              timestamp; each decoded frame is the video's frame at that row (checked against
              a straight PyAV decode of the file)
  loader      a shuffled torch DataLoader yields several batches of frames, actions and states
  stats       lerobot's own `get_feature_stats` on each episode's rows reproduces our
              meta/episodes stats (min .. q99), and its `aggregate_stats` reproduces meta/stats.json
  extras      meta/episodes keeps our extra columns (success, mt1_seed, layout_slot) and
              meta/lawam_samples.json lists every episode's layout
Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import torch
from lerobot.datasets.compute_stats import aggregate_stats, get_feature_stats
from lerobot.datasets.lerobot_dataset import LeRobotDataset

STAT_KEYS = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")


class Report:
    """Collects check outcomes; a failed check is printed and makes the run exit 1."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, name: str, ok: bool, detail: str) -> None:
        print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        if not ok:
            self.failures.append(name)


def open_dataset(root: Path) -> tuple[LeRobotDataset, str, str]:
    """The dataset with the first video backend that decodes here: torchcodec, else pyav."""
    note = ""
    for backend in ("torchcodec", "pyav"):
        dataset = LeRobotDataset("lawam/metaworld_samples", root=root, video_backend=backend)
        try:
            dataset[0]
            return dataset, backend, note
        except Exception as exc:  # noqa: BLE001 - a backend that cannot load here is reported, then the next tried
            note = f"{backend} unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    raise RuntimeError(f"no video backend decodes {root}: {note}")


def video_frames(path: Path) -> np.ndarray:
    """Every frame of an mp4 as (F, H, W, 3) uint8, via PyAV."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def check_rows(dataset: LeRobotDataset, report: Report) -> None:
    episodes = dataset.meta.episodes
    root = dataset.root
    decoded = {key: {} for key in dataset.meta.video_keys}
    loaded, mismatched, worst, errors = 0, 0, 0.0, []
    for index in range(len(dataset)):
        try:
            item = dataset[index]
        except Exception as exc:  # noqa: BLE001 - every row that lerobot refuses is counted, the first shown
            errors.append(f"row {index}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            continue
        loaded += 1
        ep = episodes[int(item["episode_index"])]
        for key in dataset.meta.video_keys:
            path = root / dataset.meta.get_video_file_path(int(item["episode_index"]), key)
            frames = decoded[key].setdefault(path, video_frames(path))
            video_fps = dataset.meta.features[key]["info"]["video.fps"]
            at = round((ep[f"videos/{key}/from_timestamp"] + float(item["timestamp"])) * video_fps)
            if at >= len(frames):
                mismatched += 1
                continue
            expected = frames[at].astype(np.float32) / 255.0  # the file's frame at this row's time
            got = item[key].permute(1, 2, 0).numpy()
            error = float(np.abs(got - expected).mean())
            worst = max(worst, error)
            mismatched += error > 2 / 255
    report.check("rows", loaded == dataset.num_frames and mismatched == 0,
                 f"{loaded}/{dataset.num_frames} rows loaded, {len(dataset.meta.video_keys)} camera(s) each; "
                 f"frames that are not the video's frame at that row: {mismatched} "
                 f"(largest mean |diff| {worst:.4f})" + (f"; first refusal: {errors[0]}" if errors else ""))


def column(rows, key: str) -> np.ndarray:
    """One column of a Hugging Face dataset as numpy, (N,) or (N, D)."""
    return np.stack(list(rows.with_format("numpy")[key]))


def check_clock(dataset: LeRobotDataset, report: Report) -> None:
    timestamps = column(dataset.hf_dataset, "timestamp")
    episode_index = column(dataset.hf_dataset, "episode_index")
    same_episode = episode_index[1:] == episode_index[:-1]
    steps = np.diff(timestamps)[same_episode]
    off = int((np.abs(steps - 1 / dataset.fps) > dataset.tolerance_s).sum())
    starts = timestamps[np.r_[True, ~same_episode]]
    video_fps = [dataset.meta.features[k]["info"]["video.fps"] for k in dataset.meta.video_keys]
    report.check("clock", off == 0 and (starts == 0).all() and set(video_fps) == {dataset.fps},
                 f"fps {dataset.fps} (video {video_fps}); "
                 f"{off} of {len(steps)} row steps off 1/fps by more than {dataset.tolerance_s} s; "
                 f"episodes start at t=0: {bool((starts == 0).all())}")


def check_loader(dataset: LeRobotDataset, report: Report, batches: int) -> None:
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True, num_workers=0,
                                         generator=torch.Generator().manual_seed(0))
    shapes, seen = set(), 0
    for i, batch in enumerate(loader):
        if i == batches:
            break
        seen += 1
        shapes.add(tuple((k, tuple(batch[k].shape)) for k in (*dataset.meta.video_keys, "action",
                                                                "observation.state")))
    report.check("loader", seen == batches, f"{seen} shuffled batches of 8; shapes {sorted(shapes)[0]}")


def check_stats(dataset: LeRobotDataset, report: Report) -> None:
    table = pq.read_table(dataset.root / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    numeric = [k for k, f in dataset.meta.features.items() if f["dtype"] not in ("video", "image", "string")]
    # lerobot computes in the column's own float32, we in float64: exact stats agree to float32
    # precision; std (sqrt of a float32 difference of squares: ~sqrt(eps) on near-constant dims)
    # and the histogram quantiles (float32 bin edges move a value by up to one of 5000 bins) to 1e-3.
    worst = {"exact": 0.0, "approximate": 0.0}
    missing, per_episode = [], []
    for e in range(dataset.meta.total_episodes):
        start, end = table["dataset_from_index"][e], table["dataset_to_index"][e]
        rows = dataset.hf_dataset.select(range(start, end))
        episode_stats = {}
        for key in numeric:
            values = column(rows, key)
            ours = {stat: np.asarray(table[f"stats/{key}/{stat}"][e]) for stat in STAT_KEYS
                    if f"stats/{key}/{stat}" in table}
            if len(ours) != len(STAT_KEYS):
                missing.append(key)
                continue
            theirs = get_feature_stats(values, axis=0, keepdims=values.ndim == 1)
            for stat in STAT_KEYS:
                scale = max(1.0, float(np.abs(theirs[stat]).max()))
                kind = "exact" if stat in ("min", "max", "mean", "count") else "approximate"
                worst[kind] = max(worst[kind], float(np.abs(np.asarray(theirs[stat], dtype=np.float64)
                                                            - ours[stat].astype(np.float64)).max()) / scale)
            episode_stats[key] = ours
        for key in dataset.meta.video_keys:
            episode_stats[key] = {stat: np.asarray(table[f"stats/{key}/{stat}"][e]) for stat in STAT_KEYS}
        per_episode.append(episode_stats)
    report.check("stats per episode", not missing and worst["exact"] < 1e-6 and worst["approximate"] < 1e-3,
                 f"{len(numeric)} data features x {dataset.meta.total_episodes} episodes recomputed with "
                 f"lerobot's get_feature_stats: largest relative difference {worst['exact']:.1e} in "
                 f"min/max/mean/count, {worst['approximate']:.1e} in std/q01..q99 (lerobot: float32)"
                 + (f"; missing {missing}" if missing else ""))
    aggregated = aggregate_stats(per_episode)  # also validates shapes: images (3, 1, 1), count (1,)
    written = dataset.meta.stats
    worst = max(float(np.abs(np.asarray(aggregated[k][s], dtype=np.float64)
                             - np.asarray(written[k][s], dtype=np.float64)).max())
                for k in aggregated for s in STAT_KEYS)
    image_shapes = {np.asarray(written[k]["q01"]).shape for k in dataset.meta.video_keys}
    report.check("stats.json", worst < 1e-6 and image_shapes == {(3, 1, 1)},
                 f"lerobot's aggregate_stats of the episodes' stats vs meta/stats.json: max |diff| {worst:.2e}; "
                 f"q01/q99 for {sorted(written)}; image stats shaped {sorted(image_shapes)}")


def check_extras(dataset: LeRobotDataset, report: Report) -> None:
    columns = set(dataset.meta.episodes.column_names)
    if not (dataset.root / "meta/lawam_samples.json").exists():
        report.check("extras", False, "meta/lawam_samples.json is absent: not a lawam sample corpus")
        return
    record = json.loads((dataset.root / "meta/lawam_samples.json").read_text())
    slots = [e["layout_slot"] for e in dataset.meta.episodes]
    ok = {"success", "mt1_seed", "layout_slot"} <= columns and len(record["episodes"]) == dataset.meta.total_episodes
    ok = ok and slots == [e["slot"] for e in sorted(record["episodes"], key=lambda e: e["episode_index"])]
    report.check("extras", ok, f"meta/episodes columns kept by lerobot: "
                 f"{sorted(columns & {'success', 'mt1_seed', 'layout_slot'})}; lawam_samples.json: "
                 f"{len(record['episodes'])} layouts, generator {record['generator']['control_hz']} Hz x "
                 f"action_repeat {record['generator']['action_repeat']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="a robot corpus: <lawam samples out_dir>/robot")
    parser.add_argument("--batches", type=int, default=5, help="shuffled DataLoader batches to draw")
    args = parser.parse_args()
    if not (args.root / "meta/info.json").exists():
        sys.exit(f"{args.root} is not a LeRobot dataset; render one with `lawam samples DIR` and pass DIR/robot")
    import lerobot

    report = Report()
    dataset, backend, note = open_dataset(args.root)
    lengths = [e["length"] for e in dataset.meta.episodes]
    report.check("load", True, f"lerobot {lerobot.__version__}, torch {torch.__version__}, video backend "
                 f"{backend}{' - ' + note if note else ''}; {dataset.meta.total_episodes} episodes "
                 f"(lengths {lengths}), {dataset.num_frames} rows, tasks {list(dataset.meta.tasks.index)}")
    checks = {"clock": check_clock, "rows": check_rows, "loader": lambda d, r: check_loader(d, r, args.batches),
              "stats": check_stats, "extras": check_extras}
    for name, run in checks.items():
        try:
            run(dataset, report)
        except Exception as exc:  # noqa: BLE001 - a check that lerobot makes crash is a failed check
            report.check(name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    print("all checks passed" if not report.failures else f"FAILED: {', '.join(report.failures)}")
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
