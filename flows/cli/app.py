"""The `lawam` app: its consoles, exit codes, the error handling every command shares, the
engine settings made before any command runs, and `lawam version`. The commands live in the
sibling modules, by area."""

from __future__ import annotations

import inspect
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from pipeline.errors import exit_code, explain

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

VERBOSE = "lawam.verbose"  # key in click's ctx.meta, set by the app callback


class _Commands(TyperGroup):
    """Runs a command. The one place where a failure becomes an exit status: a fault that is
    not a bug ends in `pipeline.errors.explain`'s one line on stderr (its traceback with -v)
    and `exit_code`'s status (2 bad input or config, 1 infrastructure, 4 resource). Bugs
    are not caught: they fail loudly, with their traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as e:
            line = explain(e)
            if line is None or ctx.meta.get(VERBOSE):
                raise
            err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(exit_code(e)) from None


app = typer.Typer(help="lawam: latent-action pretraining corpora from robot and human video.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, cls=_Commands,
                  context_settings={"help_option_names": ["-h", "--help"]})


def reflow_help(typer_app: typer.Typer) -> None:
    """Give every command its docstring as help with each paragraph on one line, for the help
    renderer to wrap to the terminal: typer's rich help keeps a docstring's own line breaks,
    which at 80 columns cut sentences in two. Run once every command is registered."""
    for info in typer_app.registered_commands:
        if info.help is None and info.callback is not None and info.callback.__doc__:
            paragraphs = inspect.cleandoc(info.callback.__doc__).split("\n\n")
            info.help = "\n\n".join(" ".join(p.split()) for p in paragraphs)


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
                                 "run logs and the traceback of any failure."),
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

