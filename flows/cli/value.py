"""`lawam value`: what one source adds to a latent world model, with and without it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.cli.app import app, out


@app.command()
def value(
    store: str = typer.Option(..., help="Store to train from: local path or s3://..."),
    source: str = typer.Option(..., help="The source id to leave out (see `lawam catalog STORE`)."),
    steps: int = typer.Option(300, min=1, help="Training steps of each of the two LaWMs (a small budget)."),
    out_dir: Path = typer.Option(None, "--out", help="Folder for the two runs and value.json "
                                 "(default: value-SOURCE next to the store, or ./value-SOURCE for a remote one)."),
    version_id: str = typer.Option(None, "--version", help="Store version (commit id or tag); default: newest."),
    config: Path = typer.Option(None, help="lam.yaml: pairs / model / optim settings (see configs/lam.yaml)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a table."),
    progress: bool = typer.Option(True, help="Show a progress bar while training."),
) -> None:
    """Train a LaWM with and without one source at the same small budget, and print held-out
    metrics of both per source kind (robot / human): forward error against copying f_t, the
    share z explains, and the probe z -> actions beside PCA of f_t.

    Both runs read one pinned store version and are scored on the same held-out episodes of
    every source, the left-out one's included; they are kept under --out and reused by a
    second call with the same settings.
    """
    from model.value import source_value
    from pipeline.progress import progress_bar
    from schemas.training import load_lam_config

    if out_dir is None:
        local = Path(store)
        out_dir = (local.parent if "://" not in store else Path(".")) / f"value-{source}"
    report = source_value(store, source, out_dir=out_dir, cfg=load_lam_config(config), steps=steps,
                          version=version_id, progress=progress_bar if progress else None)
    if as_json:
        out.print_json(json.dumps(report.to_json(), default=float))
        return
    out.print(report.to_table())
    out.print(f"runs: {report.runs['with']} and {report.runs['without']}; JSON: {Path(out_dir) / 'value.json'}",
              highlight=False)
