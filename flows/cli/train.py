"""Training commands: stage 1 (`train-lam`), its labels (`label`), stage 2 (`distill`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.app import app, out
from schemas.cards import StoppedRun

# The run options train-lam and distill share.
Workers = Annotated[int, typer.Option(min=1, help="Data-parallel workers: >1 runs the same loop under Ray Train "
                                            "(DDP).")]
Resume = Annotated[bool, typer.Option(help="Continue the run in --out exactly where its last checkpoint stopped "
                                      "(a folder with nothing to resume starts a fresh run).")]
Force = Annotated[bool, typer.Option("--force", help="Replace the run --out holds (finished or stopped).")]
KeepVersion = Annotated[bool, typer.Option(help="Tag the store version the finished run read, so `lawam gc` never "
                                           "expires what its card names (--no-keep-version: leave it untagged).")]
Device = Annotated[str, typer.Option(help="auto (CUDA with bf16 when present), cpu or cuda.")]


@app.command("train-lam")
def train_lam_cmd(
    store: str = typer.Option(..., help="Store to train from: local path or s3://..."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for model.safetensors, card.json, curves, checkpoints."),
    version_id: str = typer.Option(None, "--version", help="Store version (commit id) to read; default: newest."),
    config: Path = typer.Option(None, help="lam.yaml: pairs / model / optim settings (see configs/lam.yaml)."),
    steps: int = typer.Option(None, min=1, help="Training steps (overrides optim.steps)."),
    workers: Workers = 1,
    resume: Resume = False,
    force: Force = False,
    keep_version: KeepVersion = True,
    device: Device = "auto",
    progress: bool = typer.Option(True, help="Show a progress bar with loss and pairs/s."),
) -> None:
    """Train the latent world model (IDM + FDM) on (f_t, f_{t+k}) pairs of a pinned store version.

    Writes OUT/model.safetensors and OUT/card.json (store version, encoder, config, metrics on
    held-out episodes), metrics.jsonl, TensorBoard events (OUT/tb), metrics.png and curves.png.
    Ctrl-C checkpoints; --resume continues. The store version is held against `lawam gc`
    while the run reads it, and tagged when it finishes. A run that fails before its first
    checkpoint leaves nothing in --out.
    """
    from model.train_lam import train_lam
    from pipeline.progress import progress_bar
    from schemas.training import load_lam_config

    cfg = load_lam_config(config)
    if workers > 1:
        from pipeline.ray_runtime import ensure_ray

        ensure_ray()
    card = train_lam(store, out_dir, cfg, version=version_id, steps=steps, resume=resume, force=force,
                     keep_version=keep_version, workers=workers, progress=progress_bar if progress else None,
                     device=device)
    if isinstance(card, StoppedRun):
        out.print(f"stopped at step {card.steps}: continue with `lawam train-lam ... --out {out_dir} --resume`")
        raise typer.Exit(130)
    m = card.metrics
    tagged = f" (tagged {card.store.tag})" if card.store.tag else ""
    out.print(f"LaWM {out_dir}: {card.steps} steps in {card.wall_time_s:.0f}s on store "
              f"{card.store.version}{tagged}; label set {card.label_set}", highlight=False)
    line = (f"  held-out forward error {m['forward_mse']:.4f} = {m['forward_over_copy']:.2f}x copying f_t; "
            f"z explains {100 * m['z_explains']:.0f}% of the gain")
    if "probe_r2_z" in m:
        line += f"; probe R^2 z {m['probe_r2_z']:.2f} vs PCA {m['probe_r2_pca']:.2f}"
    out.print(line, highlight=False)


@app.command()
def label(
    store: str = typer.Option(..., help="Store to label: local path or s3://..."),
    lam: Path = typer.Option(..., help="A `lawam train-lam` output folder (model.safetensors + card.json)."),
    version_id: str = typer.Option(None, "--version", help="Store version to read; default: newest."),
    export: Path = typer.Option(None, help="Also write (episode, t, z) of the whole label set to this Parquet file."),
    actors: int = typer.Option(None, min=1, help="Labelling actors on Ray (default: on a cluster one per GPU, else "
                                                 "one per node; on one machine with at most one GPU, none: this "
                                                 "process labels)."),
    redo: list[str] = typer.Option(None, help="Label these episodes again (source/episode_id; comma-separated or "
                                   "repeated), replacing their labels in the set."),
    damaged: bool = typer.Option(False, "--damaged", help="Label again the episodes whose labels are unreadable or "
                                 "hold NaN/inf (what `lawam verify` reports)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Label every pair of every episode with the LaWM's latent action, as a label set in the store.

    Only episodes without current labels of this LaWM's set (new, or redone since) are
    labelled, plus those named by --redo or found by --damaged; the labels land in one new
    commit. Several label sets coexist; a set is named by the LaWM's weights and every card
    field that changes its labels. A LaWM whose weights are not its card's, or that gives
    NaN, is refused before anything is written.
    """
    import pyarrow.parquet as pq

    from model.labeler import IdmLabeler
    from pipeline.label import label_store
    from pipeline.store import FeatureStore, LabelSet

    labeler = IdmLabeler(str(lam))
    keys = [k.strip() for item in redo or () for k in item.split(",") if k.strip()]
    report = label_store(store, labeler, version=version_id, redo=keys, damaged=damaged, num_actors=actors,
                         progress=progress)
    if export:
        pinned = FeatureStore.open(store, report.version_after or version_id)
        table = LabelSet.open(pinned, labeler.set_id).to_table()
        pq.write_table(table, export)
    again = f"; {report.redone} relabelled on request" if report.redone else ""
    out.print(f"label set {report.set_id} in {store}: +{report.episodes} episodes ({report.pairs} pairs, "
              f"{report.pairs_per_s:.0f} pairs/s{again}), {report.skipped} already labelled; "
              f"{report.version_before} -> {report.version_after or '(unchanged)'}", highlight=False, soft_wrap=True)
    if len(report.nodes) > 1:  # a cluster: where the work went
        out.print("  episodes per Ray node: " + ", ".join(f"{n}: {c}" for n, c in sorted(report.nodes.items())),
                  highlight=False)
    if export:
        out.print(f"exported {table.num_rows} labels to {export}", highlight=False)


@app.command()
def distill(
    store: str = typer.Option(..., help="Store to train from: local path or s3://..."),
    labels: Path = typer.Option(None, help="The `lawam train-lam` folder whose label set to distil "
                                          "(`lawam label` must have run); not needed with --no-subgoal."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for model.safetensors, card.json, curves, checkpoints."),
    version_id: str = typer.Option(None, "--version", help="Store version (commit id) to read; default: newest."),
    config: Path = typer.Option(None, help="distill.yaml: pairs / model / optim settings (configs/distill.yaml)."),
    steps: int = typer.Option(None, min=1, help="Training steps (overrides optim.steps)."),
    subgoal: bool = typer.Option(True, help="--no-subgoal: the ablation (same network, no latent subgoal: "
                                           "behaviour cloning)."),
    action_fraction: float = typer.Option(None, min=0.0, max=1.0, help="Share of robot episodes that keep "
                                          "their actions; the rest train as action-free video."),
    action_head: str = typer.Option(None, help="l1 (regression, default) or flow (flow matching)."),
    workers: Workers = 1,
    resume: Resume = False,
    force: Force = False,
    keep_version: KeepVersion = True,
    device: Device = "auto",
    progress: bool = typer.Option(True, help="Show a progress bar with the losses and pairs/s."),
) -> None:
    """Distil a LaWAM policy: predict the latent action, decode it into a subgoal with the frozen
    LaWM, generate an action chunk. Human video trains the latent term, robot episodes both.

    Writes OUT/model.safetensors (the frozen LaWM inside) and OUT/card.json (store version,
    label set, LaWM, encoder, config, held-out metrics), metrics.jsonl, TensorBoard events
    (OUT/tb) and curves.png. Ctrl-C checkpoints; --resume continues. A label set holding
    NaN/inf or unreadable labels is refused. The store version is held against `lawam gc`
    while the run reads it, and tagged when it finishes.
    """
    from model.distill import distill as run_distill
    from pipeline.progress import progress_bar
    from schemas.training import load_distill_config

    cfg = load_distill_config(config)
    model_updates: dict = {"subgoal": subgoal} if not subgoal else {}
    if action_head is not None:
        if action_head not in ("l1", "flow"):
            raise typer.BadParameter("use l1 or flow", param_hint="--action-head")
        model_updates["action_head"] = action_head
    updates: dict = {"model": cfg.model.model_copy(update=model_updates)}
    if action_fraction is not None:
        if action_fraction <= 0:
            raise typer.BadParameter("must be > 0: some robot episodes must keep their actions",
                                     param_hint="--action-fraction")
        updates["action_fraction"] = action_fraction
    cfg = cfg.model_copy(update=updates)
    if workers > 1:
        from pipeline.ray_runtime import ensure_ray

        ensure_ray()
    card = run_distill(store, out_dir, labels if subgoal else None, cfg, version=version_id, steps=steps,
                       resume=resume, force=force, keep_version=keep_version, workers=workers, device=device,
                       progress=progress_bar if progress else None)
    if isinstance(card, StoppedRun):
        out.print(f"stopped at step {card.steps}: continue with `lawam distill ... --out {out_dir} --resume`")
        raise typer.Exit(130)
    m = card.metrics
    what = "LaWAM policy" if card.subgoal else "BC policy (no subgoal)"
    out.print(f"{what} {out_dir}: {card.steps} steps in {card.wall_time_s:.0f}s on store "
              f"{card.store.version}" + (f", label set {card.label_set}" if card.label_set else ""),
              highlight=False)
    line = f"  held-out action L1 {m.get('heldout_action', float('nan')):.4f}"
    if "subgoal_mse" in m:
        line += f"; subgoal error {m['subgoal_mse']:.4f} vs copying f_t {m['copy_mse']:.4f}"
    out.print(line, highlight=False)

