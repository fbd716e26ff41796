"""`lawam curate`: still spans and near-duplicates from a store's features, as a curation set."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.cli.app import app, out


@app.command()
def curate(
    store: str = typer.Option(..., help="Store to curate: local path or s3://..."),
    version_id: str = typer.Option(None, "--version", help="Store version to score; default: newest."),
    config: Path = typer.Option(None, help="A curate.yaml (configs/curate.yaml holds every field with its "
                                "default); default: the defaults."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Find still spans (static: a picture held; idle: nothing moves) and near-duplicate
    episodes from the stored features — no video is opened — and commit them as a curation set
    (`cur-...`, named by the config and the store's encoder).

    Only episodes without current rows in the set (new, or redone since) are scored; each is
    checked for duplicates against every episode, old and new. Nothing is deleted: name the
    set in a training config (`pairs: {curation: cur-...}`) to skip what it drops;
    `lawam catalog` shows the hours kept and dropped per source.
    """
    from pipeline.curation import curate_store
    from schemas.curation import load_curation_config

    report = curate_store(store, load_curation_config(config), version=version_id, progress=progress)
    out.print(f"curation set {report.set_id} in {store}: +{report.episodes} episodes ({report.frames} frames), "
              f"{report.skipped} already curated; {report.spans} still spans ({report.still_s:.1f} s), "
              f"{report.duplicates} new duplicates, {report.regrouped} regrouped; {report.seconds:.1f} s; "
              f"{report.version_before} -> {report.version_after or '(unchanged)'}", highlight=False, soft_wrap=True)
