"""The `lawam` app: its consoles, exit codes, the error handling every command shares, the
engine settings made before any command runs, and `lawam version`. The commands live in the
sibling modules, by area."""

from __future__ import annotations

import logging
import os
import signal
import sys
from importlib.metadata import PackageNotFoundError, version

import click
import typer
from rich.console import Console
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
        except KeyboardInterrupt:  # Ctrl-C 130; SIGTERM, turned into one by `pipeline.ray_runtime`, 143
            ray_runtime = sys.modules.get("pipeline.ray_runtime")
            raise typer.Exit(128 + (getattr(ray_runtime, "received", None) or signal.SIGINT)) from None
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

