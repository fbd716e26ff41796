"""One self-contained HTML page of a run of the chain: the success rate first (what a reader
came for), then what the store holds, what each stage did and how stage 1 went.

    write_report("data/demo/report.html", summary, stages, lam_dir="runs/lam", lam_metrics=card.metrics,
                 eval_dir="runs/policy/eval")

Images are embedded (base64 data URIs): the file can be mailed or attached to a ticket as
it is; the rollout videos are linked, relative to the page. Paths are shown relative to
the page's folder (a mailed page says nothing of the machine it was made on; object-store
URLs stay as they are). Standard library only.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.catalog import CatalogSummary
from pipeline.evaluation.results import RESULTS, read_results

_CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#4c78a8;height:12px;display:inline-block;vertical-align:middle;margin-right:6px}
.lead{font-size:1.3em;margin:.2em 0 1em}.muted{color:#666}
img{max-width:100%;border:1px solid #ddd;margin:.3em 0}code{background:#f5f5f5;padding:0 3px}"""


class _Page:
    """HTML pieces of one page, with every path said relative to the page's folder."""

    def __init__(self, path: Path):
        self.base = path.parent.resolve()

    def path(self, p: str | Path) -> str:
        text = str(p)
        if "://" in text:
            return text
        return os.path.relpath(Path(text).resolve(), self.base)

    def e(self, v: Any) -> str:
        """Escaped text; an absolute path inside the page's folder is cut to its relative part."""
        text = "" if v is None else str(v)
        return html.escape(text.replace(str(self.base) + os.sep, ""))

    def num(self, v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}" if abs(v) < 1e9 else f"{v:.3g}"
        return self.e(v)

    def table(self, rows: Sequence[dict[str, Any]], columns: Sequence[str], raw: Sequence[str] = ()) -> str:
        """`raw` columns hold HTML already."""
        def cell(r: dict, c: str) -> str:
            v = r.get(c)
            if c in raw:
                return f"<td>{'' if v is None else v}</td>"
            if isinstance(v, int | float) and not isinstance(v, bool):
                return f'<td class="n">{self.num(v)}</td>'
            return f"<td>{self.e(v)}</td>"

        head = "".join(f"<th>{self.e(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(cell(r, c) for c in columns) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    @staticmethod
    def bar(value: float, scale: float, label: str) -> str:
        """A bar and its label beside it, so a zero-length bar still says its value."""
        width = 200 * value / scale if scale else 0
        return f'<span class="bar" style="width:{width:.0f}px"></span>{html.escape(label)}'

    def image(self, path: Path, alt: str) -> str:
        if not path.is_file():
            return f"<p><em>{self.e(path.name)} not found</em></p>"
        data = base64.b64encode(path.read_bytes()).decode()
        return (f'<figure><img alt="{self.e(alt)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{self.e(alt)}</figcaption></figure>")


def _success(page: _Page, eval_dir: Path) -> tuple[str, str]:
    """(the lead line, the section) of an evaluation folder."""
    results_path = eval_dir / RESULTS
    if not results_path.is_file():
        return ("<p class='lead muted'>No closed-loop evaluation in this run.</p>",
                f"<h2>Closed-loop success</h2><p><em>{page.e(page.path(results_path))} not found</em></p>")
    results = read_results(results_path)
    o = results["overall"]
    lo, hi = o["ci95"]
    tasks = ", ".join(results["tasks"])
    lead = (f"<p class='lead'>Closed-loop success: <b>{100 * o['success_rate']:.0f}%</b> "
            f"({o['successes']}/{o['episodes']} held-out episodes, 95% CI {100 * lo:.0f}–{100 * hi:.0f}%) "
            f"on {page.e(tasks)}.</p>")
    rows = []
    for task, t in results["tasks"].items():
        video = t.get("video")
        link = (f'<a href="{html.escape(page.path(eval_dir / video))}">{html.escape(video)}</a>'
                if video and (eval_dir / video).is_file() else "")
        rows.append({"task": task, "succeeded": f"{t['successes']}/{t['episodes']}",
                     "success rate": page.bar(100 * t["success_rate"], 100.0, f"{100 * t['success_rate']:.0f}%"),
                     "95% CI": f"{100 * t['ci95'][0]:.0f}–{100 * t['ci95'][1]:.0f}%",
                     "mean steps": float(t["mean_steps"]), "rollout": link})
    section = ("<h2>Closed-loop success</h2>"
               f"<p>Policy <code>{page.e(page.path(results['policy'].get('path') or eval_dir.parent))}</code>, "
               f"results <code>{page.e(page.path(results_path))}</code>.</p>"
               + page.table(rows, ["task", "succeeded", "success rate", "95% CI", "mean steps", "rollout"],
                            raw=("success rate", "rollout"))
               + page.image(eval_dir / results.get("plot", "success.png"), "success rate per task (95% intervals)"))
    return lead, section


def _lam_metrics(page: _Page, m: dict[str, float]) -> str:
    """The LaWM's one-off held-out metrics beside their controls: copying f_t and decoding with
    z = 0 for the forward error, a linear probe on PCA of f_t for the action content of z."""
    def v(key: str) -> float | None:
        return m.get(key)

    rows = [{"held-out measure": "forward error of f_{t+k}, MSE (lower is better)", "LaWM (z)": v("forward_mse"),
             "copy f_t": v("copy_mse"), "z = 0": v("zero_z_mse"), "PCA of f_t": None}]
    if "shuffle_episode_increase" in m:
        rows.append({"held-out measure": "MSE increase with z of another moment of the episode",
                     "LaWM (z)": v("shuffle_episode_increase")})
    if "shuffle_batch_increase" in m:
        rows.append({"held-out measure": "MSE increase with z of another held-out pair",
                     "LaWM (z)": v("shuffle_batch_increase")})
    if "probe_r2_z" in m:
        rows.append({"held-out measure": "linear probe of the action chunk, R² (higher is better)",
                     "LaWM (z)": v("probe_r2_z"), "PCA of f_t": v("probe_r2_pca")})
    notes = []
    if "forward_over_copy" in m:
        notes.append(f"forward / copy = {m['forward_over_copy']:.3g}")
    if "z_explains" in m:
        notes.append(f"z explains {100 * m['z_explains']:.0f}% of the gain over copying")
    if "heldout_pairs" in m:
        n = m.get("heldout_episodes", 0)
        notes.append(f"{m['heldout_pairs']:.0f} held-out pairs of {n:.0f} episode{'' if n == 1 else 's'}")
    if "probe_pairs_train" in m:
        notes.append(f"probe fitted on {m['probe_pairs_train']:.0f} train pairs")
    if m.get("heldout_is_train"):
        notes.append("<b>no held-out episodes: measured on training pairs</b>")
    return (page.table(rows, ["held-out measure", "LaWM (z)", "copy f_t", "z = 0", "PCA of f_t"])
            + (f"<p class='muted'>{'; '.join(notes)}.</p>" if notes else ""))


def write_report(path: str | Path, catalog: CatalogSummary, stages: Sequence[dict[str, Any]], *,
                 lam_dir: str | Path | None = None, lam_metrics: dict[str, float] | None = None,
                 eval_dir: str | Path | None = None, title: str = "lawam run") -> Path:
    """Write one HTML file at `path` (images embedded) and return it: the success rate
    (`eval_dir`/results.json, success.png, the rollout videos linked), hours and episodes per
    source (`catalog`) and, per curation set, hours kept and dropped and why; one row per stage
    (`stages`: dicts with stage, items, unit, seconds, throughput, version_before/after; see
    `flows.common.stage_row`), and stage 1: its held-out metrics against their controls
    (`lam_metrics`, the LaWM card's) and its training curves (`lam_dir`/curves.png)."""
    path = Path(path)
    page = _Page(path)
    lead, success = _success(page, Path(eval_dir)) if eval_dir is not None else ("", "")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{page.e(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{page.e(title)}</h1>", lead,
             f"<p class='muted'>Store <code>{page.e(page.path(catalog.store))}</code> at version "
             f"<code>{page.e(catalog.version)}</code>; encoder "
             f"{page.e(catalog.encoder.describe() if catalog.encoder else '(none yet)')}. "
             f"Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>", success, "<h2>Hours per source</h2>"]
    top = max((s.hours for s in catalog.sources), default=0.0)
    sources = [{"source": s.source, "kind": s.kind, "episodes": s.episodes, "frames": s.frames, "hours": s.hours,
                "minutes": page.bar(s.hours * 60, top * 60, f"{s.hours * 60:.2f} min"),
                "quarantined": s.quarantined} for s in catalog.sources]
    parts.append(page.table(sources, ["source", "kind", "episodes", "frames", "hours", "minutes", "quarantined"],
                            raw=("minutes",)))
    if catalog.quarantined:
        parts.append("<h3>Quarantined</h3>" + page.table(catalog.quarantined, ["source", "episode_id", "reason"]))
    for cs in catalog.curation_sets:
        parts.append(f"<h3>Curation set <code>{page.e(cs['id'])}</code>: {cs['curated']}/{cs['episodes']} episodes "
                     "curated</h3><p>Hours training sees (kept) and what it skips, and why, per source.</p>")
        hours = [{"source": s["source"], "hours": s["hours"], "kept": s["kept_h"], "duplicate": s["duplicate_h"],
                  "static": s["static_h"], "idle": s["idle_h"], "uncurated": s["uncurated_h"],
                  "episodes dropped": s["dropped_episodes"]} for s in cs["sources"]]
        parts.append(page.table(hours, ["source", "hours", "kept", "duplicate", "static", "idle", "uncurated",
                                        "episodes dropped"]))
        if cs["examples"]:
            parts.append("<p>Examples:</p>" + page.table(cs["examples"], ["reason", "episode", "what"]))
    for ls in catalog.label_sets:
        parts.append(f"<p>Label set <code>{page.e(ls['id'])}</code>: {ls['labelled']}/{ls['episodes']} episodes "
                     f"({100 * ls['coverage']:.0f}%), {ls['stale']} stale; LaWM "
                     f"<code>{page.e(page.path(ls['lam_dir']))}</code>.</p>")
    parts.append("<h2>Throughput per stage</h2>")
    parts.append(page.table(stages, ["stage", "items", "unit", "seconds", "throughput", "version_before",
                                     "version_after", "reused"]))
    if lam_dir is not None or lam_metrics:
        parts.append("<h2>Stage 1: latent world model</h2>")
        if lam_dir is not None:
            parts.append(f"<p><code>{page.e(page.path(lam_dir))}</code></p>")
        if lam_metrics:
            parts.append(_lam_metrics(page, lam_metrics))
        if lam_dir is not None:
            parts.append(page.image(Path(lam_dir) / "curves.png", "training curves (metrics.jsonl)"))
    parts.append("</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text("".join(parts))
    tmp.replace(path)
    return path


__all__ = ["write_report"]
