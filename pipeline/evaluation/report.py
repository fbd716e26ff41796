"""One self-contained HTML page of a run of the chain: what the store holds, what each
stage did, the training curves and the success rates.

    write_report("data/demo/report.html", summary, stages, lam_dir="runs/lam", eval_dir="runs/policy/eval")

Images are embedded (base64 data URIs): the file can be mailed or attached to a ticket
as it is. Standard library only.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.catalog import CatalogSummary

_CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#4c78a8;height:12px;display:inline-block;vertical-align:middle}
img{max-width:100%;border:1px solid #ddd;margin:.3em 0}code{background:#f5f5f5;padding:0 3px}"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return _e(v)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(
        f'<td class="n">{_num(r.get(c))}</td>' if isinstance(r.get(c), int | float) and not isinstance(r.get(c), bool)
        else f"<td>{_e(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _bars(pairs: Sequence[tuple[str, float]], scale: float, fmt: str) -> str:
    rows = "".join(f'<tr><td>{_e(k)}</td><td class="n">{fmt.format(v)}</td><td><span class="bar" '
                   f'style="width:{300 * v / scale if scale else 0:.0f}px"></span></td></tr>' for k, v in pairs)
    return f"<table>{rows}</table>"


def _image(path: Path, alt: str) -> str:
    if not path.is_file():
        return f"<p><em>{_e(path.name)} not found</em></p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(alt)}</figcaption></figure>")


def write_report(path: str | Path, catalog: CatalogSummary, stages: Sequence[dict[str, Any]], *,
                 lam_dir: str | Path | None = None, eval_dir: str | Path | None = None,
                 title: str = "lawam run") -> Path:
    """Write one HTML file at `path` (images embedded) and return it: hours and episodes per
    source (`catalog`), one row per stage (`stages`: dicts with stage, items, unit, seconds,
    throughput, version_before/after; see `flows.common.stage_row`), the LaWM's curves
    (`lam_dir`/metrics.png, curves.png) and the success rates (`eval_dir`/results.json, success.png)."""
    path = Path(path)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>",
             f"<p>Store <code>{_e(catalog.store)}</code> at version <code>{_e(catalog.version)}</code>; encoder "
             f"{_e(catalog.encoder.describe() if catalog.encoder else '(none yet)')}. "
             f"Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>",
             "<h2>Hours per source</h2>"]
    sources = [{"source": s.source, "kind": s.kind, "episodes": s.episodes, "frames": s.frames,
                "hours": s.hours, "quarantined": s.quarantined} for s in catalog.sources]
    parts.append(_table(sources, ["source", "kind", "episodes", "frames", "hours", "quarantined"]))
    top = max((s.hours for s in catalog.sources), default=0.0)
    parts.append(_bars([(s.source, s.hours * 60) for s in catalog.sources], top * 60, "{:.2f} min"))
    if catalog.quarantined:
        parts.append("<h3>Quarantined</h3>" + _table(catalog.quarantined, ["source", "episode_id", "reason"]))
    for ls in catalog.label_sets:
        parts.append(f"<p>Label set <code>{_e(ls['id'])}</code>: {ls['labelled']}/{ls['episodes']} episodes "
                     f"({100 * ls['coverage']:.0f}%), {ls['stale']} stale; LaWM {_e(ls['lam_dir'])}.</p>")
    parts.append("<h2>Throughput per stage</h2>")
    parts.append(_table(stages, ["stage", "items", "unit", "seconds", "throughput", "version_before",
                                 "version_after", "reused"]))
    if lam_dir is not None:
        lam = Path(lam_dir)
        parts.append(f"<h2>Stage 1: latent world model</h2><p><code>{_e(lam)}</code></p>")
        parts.append(_image(lam / "curves.png", "training curves (metrics.jsonl)"))
        parts.append(_image(lam / "metrics.png", "held-out metrics"))
    if eval_dir is not None:
        ev = Path(eval_dir)
        parts.append("<h2>Closed-loop success</h2>")
        results_path = ev / "results.json"
        if results_path.is_file():
            results = json.loads(results_path.read_text())
            o = results["overall"]
            parts.append(f"<p>{o['successes']}/{o['episodes']} episodes succeeded ({100 * o['success_rate']:.0f}%, "
                         f"95% CI {100 * o['ci95'][0]:.0f}–{100 * o['ci95'][1]:.0f}%).</p>")
            parts.append(_bars([(t, r["success_rate"] * 100) for t, r in results["tasks"].items()], 100.0,
                               "{:.0f}%"))
        parts.append(_image(ev / "success.png", "success rate per task (95% intervals)"))
    parts.append("</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text("".join(parts))
    tmp.replace(path)
    return path


__all__ = ["write_report"]
