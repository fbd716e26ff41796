"""Data commands: render the samples, ingest, and look after a store (catalog, versions,
verify, gc, tag)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli.app import app, err, out
from pipeline.errors import EXIT_QUARANTINED, EXIT_RESOURCE
from schemas.errors import ConfigError


@app.command()
def samples(
    out_dir: Path = typer.Argument(..., help="Folder to write robot/ (LeRobot v3.0) and human/ (videos + manifest)."),
    tasks: str = typer.Option(None, help="Comma-separated Meta-World tasks for the robot corpus (default: reach, "
                              "push, drawer-open, button-press-topdown, door-open)."),
    episodes_per_task: int = typer.Option(2, min=1, help="Scripted-expert episodes per robot task, each its own "
                                          "goal layout (past 50, the next MT1 seed's layouts)."),
    human_tasks: str = typer.Option(None, help="Comma-separated Meta-World tasks for the human stand-in."),
    human_episodes_per_task: int = typer.Option(2, min=1, help="Episodes per human stand-in task."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same corpora."),
    image_size: int = typer.Option(128, min=32, help="Rendered image side, pixels."),
    cameras: str = typer.Option("corner", help="Comma-separated Meta-World cameras for the robot corpus."),
    progress: bool = typer.Option(True, help="Show a progress bar while rendering."),
) -> None:
    """Render the sample corpora (Meta-World robot episodes, action-free human stand-in).

    Cached: a second call with the same arguments renders nothing.
    """
    from pipeline.samples import make_samples

    kwargs: dict = {}
    if tasks:
        kwargs["tasks"] = [t.strip() for t in tasks.split(",") if t.strip()]
    if human_tasks:
        kwargs["human_tasks"] = [t.strip() for t in human_tasks.split(",") if t.strip()]
    summary = make_samples(out_dir, episodes_per_task=episodes_per_task,
                           human_episodes_per_task=human_episodes_per_task, seed=seed, image_size=image_size,
                           cameras=[c.strip() for c in cameras.split(",") if c.strip()], progress=progress, **kwargs)
    out.print(summary.to_table())


def _print_report(report) -> None:
    out.print(f"store {report.store}: {report.version_before or '(new)'} -> {report.version_after or '(unchanged)'}")
    out.print(f"  added {report.added}, skipped {report.skipped}, quarantined {len(report.quarantined)}; "
              f"{report.frames} frames in {report.seconds:.1f}s = {report.frames_per_s:.1f} frames/s", highlight=False)
    if len(getattr(report, "nodes", {})) > 1:  # a cluster: where the work went
        out.print("  Ray nodes: " + "; ".join(f"{n} decoded {c['episodes decoded']} episodes, encoded "
                                              f"{c['frames encoded']} frames" for n, c in sorted(report.nodes.items())),
                  highlight=False, soft_wrap=True)
    for key, reason in report.quarantined:
        out.print(f"  [yellow]quarantined[/yellow] {escape(key)}: {escape(reason)}", highlight=False, soft_wrap=True)
    if getattr(report, "held", 0):
        out.print(f"  {report.held} still quarantined, input unchanged: not retried (--retry-quarantined "
                  "retries them; `lawam catalog` lists them)", highlight=False)


def _prefect_api_configured() -> bool:
    """True when runs should go to a Prefect server: `PREFECT_API_URL` in the environment or
    in the active Prefect profile (read as TOML, so deciding imports no Prefect)."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    import tomllib

    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    try:
        data = tomllib.loads(profiles.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    return bool(data.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


@app.command()
def ingest(
    config: Path = typer.Argument(..., help="A source YAML file, or a corpus YAML file (has `sources:`)."),
    store: str = typer.Option(None, help="Store location: local path or s3://... (default: the corpus's store.uri)."),
    corpus: Path = typer.Option(None, help="Corpus YAML whose encoder/sampling settings to use with a source file."),
    source: list[str] = typer.Option(None, help="With a corpus file: ingest only these source ids."),
    flow: bool = typer.Option(None, "--flow/--no-flow", show_default=False,
                              help="Run as the Prefect flow `ingest_source` (--flow) or as a plain library call "
                              "(--no-flow). Default: the flow when a Prefect server is configured "
                              "(PREFECT_API_URL in the environment or the active profile), the plain call "
                              "otherwise, which skips the ~15 s temporary server Prefect starts for a flow "
                              "run without one."),
    retry_quarantined: bool = typer.Option(False, "--retry-quarantined",
                                           help="Retry quarantined episodes whose input did not change too "
                                           "(by default only changed ones are retried)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Ingest a source (or a whole corpus) into a versioned feature store.

    Episodes already in the store with the same content are skipped; new and changed ones
    are decoded, encoded and committed as one new store version. Unchanged files are not read
    again (the store remembers each file's size, mtime, ctime and inode beside its hash), so a
    refresh with nothing new costs a stat per file. A quarantined episode is retried when its
    file changed, or with --retry-quarantined. Exit status 3 when this run quarantined
    episodes (they are listed, the rest is committed).

    A one-off run is a plain library call unless a Prefect server is configured
    (PREFECT_API_URL) or --flow is given: then it runs as the flow `ingest_source`, with its
    retries and report artifact, visible in the Prefect UI.
    """
    import yaml

    from schemas import CorpusConfig, load_corpus, load_source

    if not config.is_file():
        raise ConfigError(f"{config}: no such file")
    try:
        raw = yaml.safe_load(config.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        raw = None  # load_source reports it, with the file and the line
    if isinstance(raw, dict) and "sources" in raw:
        cfg = load_corpus(config)
    else:
        spec = load_source(config)
        base = load_corpus(corpus) if corpus else CorpusConfig(sources=[spec])
        cfg = base.model_copy(update={"sources": [spec]})
        if not corpus and not store:
            raise ConfigError("a source file needs --store (or --corpus naming one)")
    if flow is None:
        flow = _prefect_api_configured()
    if flow:
        from flows.ingest import ingest_source
        from pipeline.sources import check_source

        for spec in cfg.sources:  # bad sources fail here in one line, not in a flow traceback
            if not source or spec.id in source:
                check_source(spec)

        report = ingest_source(cfg, sources=source or None, store_uri=store, progress=progress,
                               retry_quarantined=retry_quarantined)
    else:
        from pipeline.ingest import ingest_corpus

        report = ingest_corpus(cfg, sources=source or None, store_uri=store, progress=progress,
                               retry_quarantined=retry_quarantined)
    _print_report(report)
    if report.quarantined:
        raise typer.Exit(EXIT_QUARANTINED)


@app.command()
def catalog(
    store: str = typer.Argument(..., help="Store location: local path or s3://..."),
    version_id: str = typer.Option(None, "--version", help="A store version (commit id); default: newest."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    export: Path = typer.Option(None, help="Write a curation set's decision for every episode (keep / trim / "
                                "drop, why, seconds kept and dropped, spans) to this Parquet file."),
    curation: str = typer.Option(None, help="The curation set to --export (default: the store's only one)."),
) -> None:
    """Summarise a store: hours / episodes / frames per source, the quarantined list (each
    with its reason, since when it fails and how many attempts failed), label sets, and per
    curation set the hours kept and dropped per source, and why."""
    from pipeline.catalog import export_decisions, summarize

    summary = summarize(store, version_id)
    exported = export_decisions(store, summary.version, export, curation) if export else None
    if as_json:
        out.print_json(json.dumps(summary.to_dict(), default=str))
        return
    table = Table(title=f"{store} @ {summary.version}")
    for col in ("source", "kind", "episodes", "frames", "hours", "quarantined"):
        table.add_column(col)
    for s in summary.sources:
        table.add_row(s.source, s.kind, str(s.episodes), str(s.frames), f"{s.hours:.4f}", str(s.quarantined))
    out.print(table)
    out.print(f"encoder: {summary.encoder.describe() if summary.encoder else '(none yet)'}", highlight=False)
    for row in summary.quarantined:
        since = row.get("failed_since")
        when = f" (failed {row.get('failures') or 1}x since {since:%Y-%m-%d %H:%M} UTC)" if since else ""
        out.print(f"[yellow]quarantined[/yellow] {escape(row['source'])}/{escape(row['episode_id'])}: "
                  f"{escape(row['reason'] or '')}{when}",
                  highlight=False, soft_wrap=True)
    for ls in summary.label_sets:
        stale = f", {ls['stale']} stale (episodes redone since)" if ls["stale"] else ""
        out.print(f"label set {ls['id']}: {ls['labelled']}/{ls['episodes']} episodes ({100 * ls['coverage']:.0f}%)"
                  f"{stale}; LaWM {ls['lam_dir']}, k = {ls['k_seconds']} s, z dim {ls['dim']}", highlight=False,
                  soft_wrap=True)
    for cs in summary.curation_sets:
        out.print(curation_table(cs))
    if exported:
        out.print(f"exported {exported} episode decisions to {export}", highlight=False)


def curation_table(cs: dict) -> Table:
    """Hours kept and dropped per source, and why, of one curation set (catalog summary form)."""
    stale = f", {cs['stale']} stale" if cs["stale"] else ""
    table = Table(title=f"curation set {cs['id']}: {cs['curated']}/{cs['episodes']} episodes curated{stale}")
    for col in ("source", "hours", "kept", "duplicate", "static", "idle", "uncurated", "dropped episodes"):
        table.add_column(col)
    for s in cs["sources"]:
        table.add_row(s["source"], *(f"{s[c]:.4f}" for c in ("hours", "kept_h", "duplicate_h", "static_h", "idle_h",
                                                              "uncurated_h")), str(s["dropped_episodes"]))
    return table


@app.command()
def versions(store: str = typer.Argument(..., help="Store location: local path or s3://...")) -> None:
    """List a store's versions (commits), newest first: pin one with `--version` or
    `FeatureStore.open(uri, version=...)` to re-read exactly what a training run read."""
    from pipeline.store import FeatureStore
    from pipeline.store.maintenance import tags

    history = FeatureStore.open(store).versions()

    tagged = tags(store)
    table = Table(title=f"versions of {store}")
    for col in ("version", "written at (UTC)", "tags", "message"):
        table.add_column(col)
    for v in history:
        table.add_row(v.id, f"{v.written_at:%Y-%m-%d %H:%M:%S}", ", ".join(tagged.get(v.id, [])), v.message)
    for vid in sorted(set(tagged) - {v.id for v in history}):  # tagged commits gc cut from the history
        table.add_row(vid, "", ", ".join(tagged[vid]), "(tagged; no longer in the branch history)")
    out.print(table)


@app.command()
def verify(
    store: str = typer.Argument(..., help="Store location: local path or s3://..."),
    version_id: str = typer.Option(None, "--version", help="A store version (commit id or tag); default: newest."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar or status lines."),
) -> None:
    """Read every chunk of a store version and check every episode (shapes, dtypes, finite
    values, frame counts against the index, checksums). Names each bad episode and exits 4
    if any; 0 when all is well."""
    from pipeline.store.verify import verify_store

    report = verify_store(store, version_id, progress=not no_progress)
    for p in report.problems:
        err.print(f"[red]bad[/red] {escape(str(p))}", highlight=False, soft_wrap=True)
    line = (f"{store} @ {report.version}: {report.episodes} episodes, {report.chunks} chunks, "
            f"{report.bytes / 1e6:.1f} MB read")
    if report.ok:
        out.print(f"ok: {line}", highlight=False, soft_wrap=True)
        return
    out.print(f"damaged: {line}; {len(report.bad_episodes)} bad episodes, {len(report.problems)} problems",
              highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_RESOURCE)  # damaged stored bytes: a resource fault, as a failed read of them is


@app.command()
def gc(
    store: str = typer.Argument(..., help="Store location: local path or s3://..."),
    older_than: str = typer.Option("7d", "--older-than", help="Drop commits and unreferenced files older than "
                                   "this (7d, 12h, 30m, 0 for all); tags and branch tips are always kept."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Expire nothing, delete nothing: count the files no "
                                 "version references now."),
) -> None:
    """Expire old versions and delete the files no kept version references (Icechunk's
    expire_snapshots + garbage_collect). Tagged versions (`lawam tag`, and the versions finished
    training runs read), versions a running train-lam / label / distill / eval holds (a lease)
    and branch tips stay; each kept version is listed with why. Leases of runs that died
    expire 12 h after their last renewal and are deleted here."""
    from pipeline.store.leases import parse_duration
    from pipeline.store.maintenance import gc_store

    report = gc_store(store, parse_duration(older_than), dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    out.print(f"{store}: {report.expired} versions expired; {verb} {report.chunks_deleted} chunks, "
              f"{report.manifests_deleted} manifests, {report.snapshots_deleted} snapshots "
              f"({report.bytes_deleted / 1e6:.1f} MB); {len(report.kept)} versions kept", highlight=False)
    young = 0
    for version_id, reasons in report.kept.items():
        if reasons == ["younger than the threshold"]:
            young += 1
        else:
            out.print(f"  kept {version_id}: {'; '.join(reasons)}", highlight=False, soft_wrap=True)
    if young:
        out.print(f"  kept {young} more, younger than {older_than}", highlight=False)
    for lease in report.leases_expired:
        out.print(f"  {'would delete' if dry_run else 'deleted'} the expired {lease.describe()} on {lease.version} "
                  "(its run ended without removing it)", highlight=False, soft_wrap=True)


@app.command()
def tag(
    store: str = typer.Argument(..., help="Store location: local path or s3://..."),
    version_id: str = typer.Argument(..., help="The version to keep: a commit id (or a tag or branch name)."),
    name: str = typer.Argument(..., help="Tag name, e.g. the training run's name."),
) -> None:
    """Tag a version so `lawam gc` keeps it; open it later by id or by tag name."""
    from pipeline.store.maintenance import tag_version

    snapshot = tag_version(store, version_id, name)
    out.print(f"tagged {snapshot} as {name!r}", highlight=False)

