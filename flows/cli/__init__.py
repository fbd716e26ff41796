"""The `lawam` command line. Each command is a thin shell over a library function; no
command catches an error: `app._Commands` turns any failure into its one line and exit
status (`pipeline.errors.explain`, `exit_code`).

Bad input or a bad config (a damaged checkpoint, a missing store, an unknown version
included) exits with status 2 and one line on stderr; an ingest that quarantined episodes
completes, lists them, and exits with status 3; an infrastructure fault (the object store,
Ray, another writer holding the store) exits with status 1 and one line saying to retry; a
resource fault (a full disk, a read-only or forbidden store, stored bytes that fail their
checksum) exits with status 4 and one line naming the cause and what to do (a retry would
fail the same way). Tracebacks only with `-v`, or for a bug.
`-h` is `--help` everywhere; `lawam --version` prints the version. Long commands show a
live bar on a terminal and a plain progress line every few seconds when stderr is not one
(`$LAWAM_PROGRESS_EVERY` seconds, default 5); `--no-progress` silences both. Ray's
start-up lines and Prefect's run logs are shown only with `-v`.
"""

from __future__ import annotations

from flows.cli.app import app, reflow_help

# The commands register on `app` as their modules load, in the order `lawam --help` lists them;
# a new area is one more module here.
# isort: off
from flows.cli import store  # noqa: F401
from flows.cli import curate  # noqa: F401
from flows.cli import train  # noqa: F401
from flows.cli import value  # noqa: F401
from flows.cli import evaluate  # noqa: F401
from flows.cli import demo  # noqa: F401
# isort: on

reflow_help(app)

__all__ = ["app"]
