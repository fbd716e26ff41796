"""The `lawam` command line. Each command is a thin shell over a library function.

Bad input or a bad config exits with status 2 and one line on stderr; an ingest that
quarantined episodes completes, lists them, and exits with status 3; an infrastructure
fault (the object store, Ray, another writer holding the store) exits with status 1 and one
line saying to retry; a resource fault (a full disk, a read-only or forbidden store) exits
with status 4 and one line naming the cause (the store keeps its last committed version; a
retry would fail the same way). Tracebacks only with `-v`, or for a bug.
`-h` is `--help` everywhere; `lawam --version` prints the version. Long commands show a
live bar on a terminal and a plain progress line every few seconds when stderr is not one
(`$LAWAM_PROGRESS_EVERY` seconds, default 5); `--no-progress` silences both. Ray's
start-up lines and Prefect's run logs are shown only with `-v`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from schemas.errors import LawamError

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

EXIT_INFRASTRUCTURE = 1
EXIT_BAD_INPUT = 2
EXIT_QUARANTINED = 3
EXIT_RESOURCE = 4
VERBOSE = "lawam.verbose"  # key in click's ctx.meta, set by the app callback


def infrastructure_line(e: BaseException) -> str | None:
    """One line for a fault that is not a bug, by what `pipeline.errors.classify` says it is:
    an infrastructure fault (the object store, a lost Ray worker, another writer holding the
    store) says to retry; a resource fault (a full disk, a read-only or forbidden store) names
    the cause and says the store kept its last committed version; bad input or config is its
    own first line. None for a bug, which keeps its traceback."""
    from pipeline.errors import classify

    kind = classify(e)
    if kind == "bug":
        return None
    what = _summary(_innermost_known(e, kind))
    if kind == "infrastructure":
        return f"{what} (retry: a re-run skips what was committed)"
    if kind == "resource":
        return (f"{what} — the run stopped and the store keeps its last committed version; "
                "free space or make the store writable, then re-run (not retried)")
    return what


def _innermost_known(e: BaseException, kind: str) -> BaseException:
    """The exception in `e`'s cause chain that carries its kind (a RayTaskError's original
    error, an OSError raised under a wrapper), whose message is the one worth a line."""
    from pipeline.errors import classify

    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        nxt = getattr(cur, "cause", None) or cur.__cause__
        if nxt is None or classify(nxt) != kind:
            return cur
        cur = nxt
    return e


def _summary(e: BaseException) -> str:
    """One line: an Icechunk report's message and innermost cause, else the first line."""
    ic = sys.modules.get("icechunk")
    if ic is not None and isinstance(e, ic.IcechunkError | ic.ConflictError | ic.RebaseFailedError):
        from pipeline.store.backend import error_summary

        return f"store: {error_summary(e)}"
    text = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if isinstance(e, LawamError) and text:
        return text[0]
    line = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    return f"ray: {line}" if type(e).__module__.startswith("ray.") else line


class _Commands(TyperGroup):
    """Runs a command; a fault that is not a bug ends in one line on stderr (its traceback
    with -v): bad input or config exit 2, infrastructure (retryable) exit 1, resource (a
    full or read-only disk, not retryable) exit 4. Bugs are not caught: they fail loudly."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as e:
            from pipeline.errors import classify

            line = infrastructure_line(e)
            if line is None or ctx.meta.get(VERBOSE):
                raise
            err.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
            code = {"infrastructure": EXIT_INFRASTRUCTURE, "resource": EXIT_RESOURCE}.get(classify(e), EXIT_BAD_INPUT)
            raise typer.Exit(code) from None


app = typer.Typer(help="lawam: latent-action pretraining corpora from robot and human video.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=_Commands,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _fail(message: str) -> None:
    """Bad input: its first line on stderr (a library's multi-line report stays behind), exit 2."""
    message = next((ln.strip() for ln in message.splitlines() if ln.strip()), message)
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _domain_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or a bad config (`schemas.errors`): shown as one line,
    exit 2, never as a traceback. (Infrastructure and resource faults are not in here: they
    reach `_Commands.invoke`, which exits 1 or 4.)"""
    from model.checkpoint import CheckpointError
    from schemas.errors import BadInputError, ConfigError

    return (ConfigError, BadInputError, CheckpointError)


def _env(verbose: bool) -> None:
    """Settings read by the engines when they load, so set before any command imports them."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray binds to loopback only
    if not verbose:
        # Prefect's run logs ("Created flow run ...", "Finished in state ...") only with -v.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        if not os.environ.get("RAY_ADDRESS") and "ray" not in sys.modules:
            # What a new local Ray does by default, stated, so it prints no notice about it. Only
            # before Ray loads: a Ray imported already read the mode, and its GCS would disagree.
            os.environ.setdefault("RAY_AUTH_MODE", "token")
    level = os.environ.get("LAWAM_LOG", "INFO" if verbose else "WARNING")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _print_version(value: bool) -> None:
    if value:
        out.print(f"lawam {version('lawam')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show INFO logs, Ray's start-up lines, Prefect's "
                                 "run logs and the traceback of an infrastructure fault."),
    show_version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                      help="Print the lawam version and exit (`lawam version` lists the engines)."),
) -> None:
    ctx.meta[VERBOSE] = verbose
    _env(verbose)


@app.command("version")
def version_cmd() -> None:
    """Print the lawam version and the versions of the engines it runs on."""
    rows = []
    for dist in ("lawam", "torch", "timm", "ray", "zarr", "icechunk", "prefect", "av", "decord"):
        try:
            rows.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            rows.append(f"{dist} (not installed)")
    out.print("\n".join(rows), highlight=False)


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
    from pipeline.samples import SampleError, make_samples

    kwargs: dict = {}
    if tasks:
        kwargs["tasks"] = [t.strip() for t in tasks.split(",") if t.strip()]
    if human_tasks:
        kwargs["human_tasks"] = [t.strip() for t in human_tasks.split(",") if t.strip()]
    try:
        summary = make_samples(out_dir, episodes_per_task=episodes_per_task,
                               human_episodes_per_task=human_episodes_per_task, seed=seed, image_size=image_size,
                               cameras=[c.strip() for c in cameras.split(",") if c.strip()], progress=progress,
                               **kwargs)
    except SampleError as e:
        _fail(str(e))
    out.print(summary.to_table())


def _print_report(report) -> None:
    out.print(f"store {report.store}: {report.version_before or '(new)'} -> {report.version_after or '(unchanged)'}")
    out.print(f"  added {report.added}, skipped {report.skipped}, quarantined {len(report.quarantined)}; "
              f"{report.frames} frames in {report.seconds:.1f}s = {report.frames_per_s:.1f} frames/s", highlight=False)
    for key, reason in report.quarantined:
        out.print(f"  [yellow]quarantined[/yellow] {key}: {reason}", highlight=False, soft_wrap=True)
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

    try:
        if not config.is_file():
            _fail(f"{config}: no such file")
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
                _fail("a source file needs --store (or --corpus naming one)")
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
    except _domain_errors() as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    _print_report(report)
    if report.quarantined:
        raise typer.Exit(EXIT_QUARANTINED)


@app.command()
def catalog(
    store: str = typer.Argument(..., help="Store location: local path or s3://..."),
    version_id: str = typer.Option(None, "--version", help="A store version (commit id); default: newest."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarise a store: hours / episodes / frames per source, and the quarantined list (each
    with its reason, since when it fails and how many attempts failed)."""
    from pipeline.catalog import summarize

    try:
        summary = summarize(store, version_id)
    except _domain_errors() as e:
        _fail(str(e))
    if as_json:
        out.print_json(json.dumps(summary.to_dict(), default=str))
        return
    table = Table(title=f"{store} @ {summary.version}")
    for col in ("source", "kind", "episodes", "frames", "hours", "quarantined"):
        table.add_column(col)
    for s in summary.sources:
        table.add_row(s.source, s.kind, str(s.episodes), str(s.frames), f"{s.hours:.4f}", str(s.quarantined))
    out.print(table)
    out.print(f"encoder: {summary.encoder.get('model')} ({summary.encoder.get('tokens')}, "
              f"{summary.encoder.get('image_size')} px, {summary.encoder.get('weights')})", highlight=False)
    for row in summary.quarantined:
        since = row.get("failed_since")
        when = f" (failed {row.get('failures') or 1}x since {since:%Y-%m-%d %H:%M} UTC)" if since else ""
        out.print(f"[yellow]quarantined[/yellow] {row['source']}/{row['episode_id']}: {row['reason']}{when}",
                  highlight=False, soft_wrap=True)
    for ls in summary.label_sets:
        stale = f", {ls['stale']} stale (episodes redone since)" if ls["stale"] else ""
        out.print(f"label set {ls['id']}: {ls['labelled']}/{ls['episodes']} episodes ({100 * ls['coverage']:.0f}%)"
                  f"{stale}; LaWM {ls['lam_dir']}, k = {ls['k_seconds']} s, z dim {ls['dim']}", highlight=False,
                  soft_wrap=True)


@app.command()
def versions(store: str = typer.Argument(..., help="Store location: local path or s3://...")) -> None:
    """List a store's versions (commits), newest first: pin one with `--version` or
    `FeatureStore.open(uri, version=...)` to re-read exactly what a training run read."""
    from pipeline.store import FeatureStore

    try:
        history = FeatureStore.open(store).versions()
    except _domain_errors() as e:
        _fail(str(e))
    from pipeline.store.maintenance import tags

    tagged = tags(store)
    table = Table(title=f"versions of {store}")
    for col in ("version", "written at (UTC)", "tags", "message"):
        table.add_column(col)
    for v in history:
        table.add_row(v.id, f"{v.written_at:%Y-%m-%d %H:%M:%S}", ", ".join(tagged.get(v.id, [])), v.message)
    for vid in sorted(set(tagged) - {v.id for v in history}):  # tagged commits gc cut from the history
        table.add_row(vid, "", ", ".join(tagged[vid]), "(tagged; no longer in the branch history)")
    out.print(table)


EXIT_DAMAGED = 4


@app.command()
def verify(
    store: str = typer.Argument(..., help="Store location: local path or s3://..."),
    version_id: str = typer.Option(None, "--version", help="A store version (commit id or tag); default: newest."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar or status lines."),
) -> None:
    """Read every chunk of a store version and check every episode (shapes, dtypes, finite
    values, frame counts against the index, checksums). Names each bad episode and exits 4
    if any; 0 when all is well."""
    from rich.markup import escape

    from pipeline.store.verify import verify_store

    try:
        report = verify_store(store, version_id, progress=not no_progress)
    except _domain_errors() as e:
        _fail(str(e))
    for p in report.problems:
        err.print(f"[red]bad[/red] {escape(str(p))}", highlight=False, soft_wrap=True)
    line = (f"{store} @ {report.version}: {report.episodes} episodes, {report.chunks} chunks, "
            f"{report.bytes / 1e6:.1f} MB read")
    if report.ok:
        out.print(f"ok: {line}", highlight=False, soft_wrap=True)
        return
    out.print(f"damaged: {line}; {len(report.bad_episodes)} bad episodes, {len(report.problems)} problems",
              highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_DAMAGED)


@app.command()
def gc(
    store: str = typer.Argument(..., help="Store location: local path or s3://..."),
    older_than: str = typer.Option("7d", "--older-than", help="Drop commits and unreferenced files older than "
                                   "this (7d, 12h, 30m, 0 for all); tags and branch tips are always kept."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Expire nothing, delete nothing: count the files no "
                                 "version references now."),
) -> None:
    """Expire old versions and delete the files no kept version references (Icechunk's
    expire_snapshots + garbage_collect). Tagged versions (`lawam tag`) and branch tips stay."""
    from pipeline.store.maintenance import gc_store, parse_duration

    try:
        report = gc_store(store, parse_duration(older_than), dry_run=dry_run)
    except ValueError as e:
        _fail(str(e))
    except _domain_errors() as e:
        _fail(str(e))
    verb = "would delete" if dry_run else "deleted"
    out.print(f"{store}: {report.expired} versions expired; {verb} {report.chunks_deleted} chunks, "
              f"{report.manifests_deleted} manifests, {report.snapshots_deleted} snapshots "
              f"({report.bytes_deleted / 1e6:.1f} MB); {len(report.kept)} versions kept", highlight=False)


@app.command()
def tag(
    store: str = typer.Argument(..., help="Store location: local path or s3://..."),
    version_id: str = typer.Argument(..., help="The version to keep: a commit id (or a tag or branch name)."),
    name: str = typer.Argument(..., help="Tag name, e.g. the training run's name."),
) -> None:
    """Tag a version so `lawam gc` keeps it; open it later by id or by tag name."""
    from pipeline.store.maintenance import tag_version

    try:
        snapshot = tag_version(store, version_id, name)
    except _domain_errors() as e:
        _fail(str(e))
    out.print(f"tagged {snapshot} as {name!r}", highlight=False)


@app.command("train-lam")
def train_lam_cmd(
    store: str = typer.Option(..., help="Store to train from: local path or s3://..."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for model.safetensors, card.json, curves, checkpoints."),
    version_id: str = typer.Option(None, "--version", help="Store version (commit id) to read; default: newest."),
    config: Path = typer.Option(None, help="lam.yaml: pairs / model / optim settings (see configs/lam.yaml)."),
    steps: int = typer.Option(None, min=1, help="Training steps (overrides optim.steps)."),
    workers: int = typer.Option(1, min=1, help="Data-parallel workers: >1 runs the same loop under Ray Train (DDP)."),
    resume: bool = typer.Option(False, help="Continue the run in --out exactly where its last checkpoint stopped."),
    device: str = typer.Option("auto", help="auto (CUDA with bf16 when present), cpu or cuda."),
    progress: bool = typer.Option(True, help="Show a progress bar with loss and pairs/s."),
) -> None:
    """Train the latent world model (IDM + FDM) on (f_t, f_{t+k}) pairs of a pinned store version.

    Writes OUT/model.safetensors and OUT/card.json (store version, encoder, config, metrics on
    held-out episodes), metrics.jsonl, TensorBoard events (OUT/tb), metrics.png and curves.png.
    Ctrl-C checkpoints; --resume continues.
    """
    from model.train_lam import train_lam
    from pipeline.progress import progress_bar
    from schemas.training import load_lam_config

    try:
        cfg = load_lam_config(config)
        if workers > 1:
            from pipeline.ray_runtime import ensure_ray

            ensure_ray()
        card = train_lam(store, out_dir, cfg, version=version_id, steps=steps, resume=resume, workers=workers,
                         progress=progress_bar if progress else None, device=device)
    except _domain_errors() as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    if card.get("interrupted"):
        out.print(f"stopped at step {card['steps']}: continue with `lawam train-lam ... --out {out_dir} --resume`")
        raise typer.Exit(130)
    m = card["metrics"]
    out.print(f"LaWM {out_dir}: {card['steps']} steps in {card['wall_time_s']:.0f}s on store "
              f"{card['store']['version']}; label set {card['label_set']}", highlight=False)
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
    actors: int = typer.Option(None, min=1, help="Labelling actors (default: one per GPU, else one on every core)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Label every pair of every episode with the LaWM's latent action, as a label set in the store.

    Only episodes without current labels of this LaWM's set (new, or redone since) are
    labelled; the labels land in one new commit. Several label sets coexist.
    """
    import pyarrow.parquet as pq

    from model.labeler import IdmLabeler
    from pipeline.label import label_store
    from pipeline.store import FeatureStore, LabelSet

    try:
        labeler = IdmLabeler(str(lam))
        report = label_store(store, labeler, version=version_id, num_actors=actors,
                             progress=progress)
        if export:
            pinned = FeatureStore.open(store, report.version_after or version_id)
            table = LabelSet.open(pinned, labeler.set_id).to_table()
            pq.write_table(table, export)
    except _domain_errors() as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    out.print(f"label set {report.set_id} in {store}: +{report.episodes} episodes ({report.pairs} pairs, "
              f"{report.pairs_per_s:.0f} pairs/s), {report.skipped} already labelled; "
              f"{report.version_before} -> {report.version_after or '(unchanged)'}", highlight=False)
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
    workers: int = typer.Option(1, min=1, help="Data-parallel workers: >1 runs the same loop under Ray Train (DDP)."),
    resume: bool = typer.Option(False, help="Continue the run in --out exactly where its last checkpoint stopped."),
    device: str = typer.Option("auto", help="auto (CUDA with bf16 when present), cpu or cuda."),
    progress: bool = typer.Option(True, help="Show a progress bar with the losses and pairs/s."),
) -> None:
    """Distil a LaWAM policy: predict the latent action, decode it into a subgoal with the frozen
    LaWM, generate an action chunk. Human video trains the latent term, robot episodes both.

    Writes OUT/model.safetensors (the frozen LaWM inside) and OUT/card.json (store version,
    label set, LaWM, encoder, config, held-out metrics), metrics.jsonl, TensorBoard events
    (OUT/tb) and curves.png. Ctrl-C checkpoints; --resume continues.
    """
    from model.distill import SelectionError
    from model.distill import distill as run_distill
    from pipeline.progress import progress_bar
    from schemas.training import load_distill_config

    try:
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
                           resume=resume, workers=workers, device=device,
                           progress=progress_bar if progress else None)
    except (*_domain_errors(), SelectionError) as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    if card.get("interrupted"):
        out.print(f"stopped at step {card['steps']}: continue with `lawam distill ... --out {out_dir} --resume`")
        raise typer.Exit(130)
    m = card["metrics"]
    what = "LaWAM policy" if card["subgoal"] else "BC policy (no subgoal)"
    out.print(f"{what} {out_dir}: {card['steps']} steps in {card['wall_time_s']:.0f}s on store "
              f"{card['store']['version']}" + (f", label set {card['label_set']}" if card["label_set"] else ""),
              highlight=False)
    line = f"  held-out action L1 {m.get('heldout_action', float('nan')):.4f}"
    if "subgoal_mse" in m:
        line += f"; subgoal error {m['subgoal_mse']:.4f} vs copying f_t {m['copy_mse']:.4f}"
    out.print(line, highlight=False)


def _policy_card(policy: Path) -> dict:
    from model.checkpoint import read_card
    from model.policy import KIND

    return read_card(policy, KIND)


@app.command("eval")
def eval_cmd(
    policy: Path = typer.Option(..., help="A `lawam distill` output folder."),
    tasks: str = typer.Option(None, help="Comma-separated Meta-World tasks (default: the training corpus's)."),
    episodes: int = typer.Option(20, min=1, help="Held-out episodes per task."),
    seed: int = typer.Option(0, help="Seed of the held-out layouts (stream 'eval'; an overlap with the "
                                     "training layouts is refused)."),
    results: Path = typer.Option(None, "--out", help="results.json to write (default: POLICY/eval/results.json); "
                                                    "success.png and one rollout MP4 per task go beside it."),
    execute_steps: int = typer.Option(None, min=1, help="Actions executed per chunk before asking again "
                                                        "(default: half the chunk)."),
    max_steps: int = typer.Option(None, min=1, help="Control steps per episode (default and cap: "
                                                    "Meta-World's 125)."),
    workers: int = typer.Option(None, min=1, help="Ray workers, one environment each (default: one per core)."),
    camera: str = typer.Option(None, help="Camera, when the store does not record the training corpus's."),
    image_size: int = typer.Option(None, help="Rendered size, when the store does not record it."),
    encoder_checkpoint: Path = typer.Option(None, help="The encoder's weights file, when the card names "
                                                       "real weights (sha256-checked)."),
    video: bool = typer.Option(True, help="Write one rollout MP4 per task."),
    latency_calls: int = typer.Option(200, min=0, help="Chunks timed for the latency figures (0 = skip)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Closed-loop success in Meta-World on held-out layouts, through the ingest's own pixel path
    (same camera, size, resize and frozen encoder), receding horizon; episodes fan out over Ray.

    Writes results.json (per-task success with 95% intervals, every episode's seeds and steps,
    latency, the policy's lineage), success.png and rollout-<task>.mp4.
    """
    from functools import partial

    from model.policy import load_policy
    from pipeline.evaluation.evaluate import EvalError, evaluate, training_view
    from pipeline.samples import SampleError
    from pipeline.samples.tasks import check_tasks

    try:
        card = _policy_card(policy)
        view = training_view(card["store"]["uri"], card["store"]["version"], camera=camera, image_size=image_size)
        names = check_tasks([t.strip() for t in tasks.split(",") if t.strip()], "--tasks") if tasks else \
            tuple(dict.fromkeys(lay.task for lay in view.layouts))
        if not names:
            raise EvalError("give --tasks: the store does not record which tasks the policy was trained on")
        out_dir = results.parent if results is not None else policy / "eval"
        if results is not None and results.name != "results.json":
            raise EvalError(f"--out {results}: name the results file results.json (the PNG and MP4s go beside it)")
        from pipeline.ray_runtime import ensure_ray

        ensure_ray()
        report = evaluate(partial(load_policy, str(policy.resolve())), tasks=names, episodes=episodes, seed=seed,
                          out_dir=out_dir, camera=view.camera, image_size=view.image_size,
                          training_layouts=view.layouts, execute_steps=execute_steps, workers=workers,
                          max_steps=max_steps, video=video, progress=progress,
                          encoder_checkpoint=encoder_checkpoint, latency_calls=latency_calls, policy=str(policy))
    except (*_domain_errors(), EvalError, SampleError) as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    out.print(report.summary(), highlight=False)
    result = json.loads((out_dir / "results.json").read_text())
    _print_latency(result.get("latency"))
    out.print(f"wrote {out_dir / 'results.json'}, success.png and {len(names) if video else 0} rollout MP4s",
              highlight=False)


def _print_latency(latency: dict | None) -> None:
    for device, lat in (latency or {}).items():
        out.print(f"latency ({device}, batch 1, {lat.get('calls', '?')} calls): policy alone "
                  f"{lat['policy_ms']['median']:.2f} ms median / {lat['policy_ms']['p95']:.2f} ms p95; "
                  f"encoder + policy {lat['encoder_policy_ms']['median']:.1f} ms / "
                  f"{lat['encoder_policy_ms']['p95']:.1f} ms", highlight=False)


@app.command()
def latency(
    policy: Path = typer.Option(..., help="A `lawam distill` output folder."),
    calls: int = typer.Option(200, min=1, help="Timed chunks per figure, after warm-up."),
    warmup: int = typer.Option(20, min=0, help="Untimed chunks first."),
    threads: int = typer.Option(None, min=1, help="torch threads (default: torch's)."),
    encoder_checkpoint: Path = typer.Option(None, help="The encoder's weights file, when the card names real weights."),
) -> None:
    """Milliseconds per action chunk at batch 1: the policy alone (features in, chunk out, the LaWM
    decoder included) and encoder + policy from a uint8 frame; on the CPU, and on CUDA when present."""
    from functools import partial

    import numpy as np

    from model.policy import load_policy
    from pipeline.encode import encoder_config_from_identity
    from pipeline.evaluation.latency import latency_report

    try:
        card = _policy_card(policy)
        cfg = encoder_config_from_identity(card["encoder"], encoder_checkpoint)
        size = int(card["encoder"]["image_size"])
        frame = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        report = latency_report(partial(load_policy, str(policy.resolve())), cfg, frame, calls=calls, warmup=warmup,
                                threads=threads)
    except _domain_errors() as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    _print_latency(report)


@app.command()
def demo(
    ctx: typer.Context,
    out_dir: Path = typer.Argument(Path("data/demo"), help="Where samples, store, runs, report.html go."),
    episodes_per_task: int = typer.Option(2, min=1, help="Robot episodes per Meta-World task."),
    lam_steps: int = typer.Option(200, min=1, help="LaWM training steps (stage 1)."),
    policy_steps: int = typer.Option(300, min=1, help="Policy distillation steps (stage 2)."),
    eval_tasks: str = typer.Option(None, help="Comma-separated tasks to evaluate (default: the corpus's five)."),
    eval_episodes: int = typer.Option(2, min=1, help="Held-out episodes per task."),
    eval_max_steps: int = typer.Option(None, min=1, help="Control steps per episode (default: Meta-World's 125)."),
    latency_calls: int = typer.Option(50, min=0, help="Chunks timed for the latency figures (0 = skip)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """The whole chain on the embedded samples, as the Prefect flow `lawam_chain`: render →
    ingest → train-lam → label → distill → eval, then the catalog and OUT_DIR/report.html
    (hours per source, throughput per stage, stage-1 curves, success rates).

    A second run redoes nothing that is done: the samples are cached, the ingest and the
    labels skip what the store holds, and finished runs on the same data and settings are kept.
    """
    from pipeline.samples import SampleError
    from pipeline.samples.tasks import check_tasks

    try:  # a typo fails now, not after training
        tasks = list(check_tasks([t.strip() for t in eval_tasks.split(",") if t.strip()], "--eval-tasks")) \
            if eval_tasks else None
    except SampleError as e:
        _fail(str(e))
    # No server configured: the flows run on Prefect's ephemeral one, which may start slowly on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    samples(out_dir / "samples", tasks=None, episodes_per_task=episodes_per_task, human_tasks=None,
            human_episodes_per_task=2, seed=0, image_size=128, cameras="corner", progress=progress)
    from flows.chain import lawam_chain
    from model.distill import SelectionError
    from pipeline.evaluation.evaluate import EvalError
    from pipeline.samples import sample_sources
    from schemas import CorpusConfig, StoreConfig
    from schemas.training import DistillConfig, LamConfig

    if not ctx.meta.get(VERBOSE):
        # A failed stage ends in one line below; Prefect's own report of it (a traceback) only with -v.
        for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    cfg = CorpusConfig(name="demo", sources=sample_sources(out_dir / "samples"),
                       store=StoreConfig(uri=str((out_dir / "store").resolve())))
    lam = LamConfig()
    lam = lam.model_copy(update={"optim": lam.optim.model_copy(update={"steps": lam_steps, "eval_every": 0,
                                                                       "checkpoint_every": 0})})
    policy = DistillConfig()
    policy = policy.model_copy(update={"optim": policy.optim.model_copy(
        update={"steps": policy_steps, "eval_every": 0, "checkpoint_every": 0})})
    try:
        result = lawam_chain(cfg, str((out_dir / "runs").resolve()), lam=lam, policy=policy, eval_tasks=tasks,
                             eval_episodes=eval_episodes, eval_max_steps=eval_max_steps, latency_calls=latency_calls,
                             report=str(out_dir / "report.html"), progress=progress)
    except (*_domain_errors(), SampleError, EvalError, SelectionError) as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    table = Table(title="lawam chain")
    for col in ("stage", "done", "seconds", "throughput", "store version"):
        table.add_column(col)
    for r in result.stages:
        done = f"{r['items']} {r['unit']}"
        if "added" in r:  # the ingest
            done = f"+{r['added']} episodes ({done}), {r['skipped']} unchanged, {r['quarantined']} quarantined"
        elif "episodes" in r:  # the labels
            done = f"+{r['episodes']} episodes ({done}), {r['skipped']} labelled already"
        done += " (reused)" if r.get("reused") else ""
        table.add_row(r["stage"], done, f"{r['seconds'] or 0:.1f}", r["throughput"] or "",
                      f"{r['version_before'] or ''} -> {r['version_after'] or ''}" if r["version_before"] else "")
    out.print(table)
    catalog(cfg.store.uri, version_id=None, as_json=False)
    out.print(f"LaWM {result.lam_dir}\npolicy {result.policy_dir}\nevaluation {result.eval_dir}", highlight=False)
    out.print(f"wrote {result.report}", highlight=False)


@app.command()
def serve(
    corpus: Path = typer.Argument(..., help="The corpus YAML whose refresh to schedule."),
    cron: str = typer.Option("0 3 * * *", help="When the refresh runs (cron, the server's time zone: UTC)."),
    runs_dir: Path = typer.Option(None, help="Where the chain deployment writes its runs (default: runs/ beside "
                                             "the store)."),
    limit: int = typer.Option(None, min=1, help="Most flow runs at once in this process (default: no limit)."),
) -> None:
    """Register the corpus's deployments on the Prefect server (PREFECT_API_URL) and run them.

    `refresh-<corpus>` runs on the cron schedule (ingest every source, then label new
    episodes when the corpus names `labels: {lam: ...}`); `chain-<corpus>` runs the whole
    chain when triggered (`prefect deployment run lawam_chain/chain-<corpus>`). One refresh
    per store at a time: a second trigger waits for the first. Ctrl-C stops serving.
    """
    from flows.serve import ServerError, serve_corpus

    try:
        serve_corpus(corpus, cron=cron, runs_dir=runs_dir, limit=limit)
    except ServerError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INFRASTRUCTURE) from None
    except _domain_errors() as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


if __name__ == "__main__":  # pragma: no cover
    app()
