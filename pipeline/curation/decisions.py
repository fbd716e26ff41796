"""What a curation set decides, per episode and per source: the catalog's "hours kept and
dropped, and why", `lawam catalog --export`'s Parquet, and the examples reports show.

Decisions are those the dataset layer applies (`pipeline.store.pairs`, with `drop_idle` and
`dedup` on): an episode that duplicates a kept one is dropped whole (reason `duplicate`); an
episode's still spans are dropped (reasons `static`, `idle`); an episode the set has no current
rows for (ingested or redone since the last `lawam curate`) is `uncurated` and served whole.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa

from pipeline.store import FeatureStore
from pipeline.store.curation import CurationSet
from schemas.tables import CURATION_DECISIONS_SCHEMA

DROP_REASONS = ("duplicate", "static", "idle")


def decisions_table(store: FeatureStore, cset: CurationSet) -> pa.Table:
    """One row per ingested episode of `store` (CURATION_DECISIONS_SCHEMA)."""
    eps = store.episodes()
    durations = eps["duration_s"].to_numpy()
    spans_by_key: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    t = cset.spans_table
    for k, s, e, r in zip(t["key"].to_pylist(), t["start"].to_pylist(), t["end"].to_pylist(), t["reason"].to_pylist(),
                          strict=True):
        spans_by_key[k].append((s, e, r))
    rows = []
    for i, (key, source, kind) in enumerate(zip(store.keys.tolist(), eps["source"].to_pylist(), eps["kind"].to_pylist(),
                                                strict=True)):
        duration = float(durations[i])
        row = {"episode": key, "source": source, "kind": kind, "duration_s": duration, "decision": "keep",
               "reason": None, "kept_s": duration, "static_s": 0.0, "idle_s": 0.0, "duplicate_s": 0.0,
               "duplicate_of": None, "similarity": None, "spans": []}
        if key not in cset:
            row["decision"] = "uncurated"
            rows.append(row)
            continue
        fps = float(store.fps[i]) or 1.0
        spans = [{"start_s": s / fps, "end_s": e / fps, "reason": r} for s, e, r in sorted(spans_by_key.get(key, []))]
        row["spans"] = spans
        row["similarity"] = cset.similarity(key)
        dup = cset.duplicate_of(key)
        if dup is not None:
            row.update(decision="drop", reason="duplicate", kept_s=0.0, duplicate_s=duration, duplicate_of=dup)
        elif spans:
            for s in spans:
                row[f"{s['reason']}_s"] += s["end_s"] - s["start_s"]
            dropped = row["static_s"] + row["idle_s"]
            whole = dropped >= duration - 1.0 / fps / 2
            row.update(decision="drop" if whole else "trim", kept_s=max(0.0, duration - dropped),
                       reason="+".join(r for r in ("static", "idle") if row[f"{r}_s"] > 0))
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=CURATION_DECISIONS_SCHEMA)


def source_hours(decisions: pa.Table) -> list[dict]:
    """Per source: hours in all, kept, dropped by reason, uncurated; episodes dropped whole."""
    out: dict[str, dict] = {}
    cols = {c: decisions[c].to_pylist() for c in ("source", "kind", "duration_s", "kept_s", "static_s", "idle_s",
                                                 "duplicate_s", "decision")}
    for i, source in enumerate(cols["source"]):
        s = out.setdefault(source, {"source": source, "kind": cols["kind"][i], "episodes": 0, "hours": 0.0,
                                    "kept_h": 0.0, "duplicate_h": 0.0, "static_h": 0.0, "idle_h": 0.0,
                                    "uncurated_h": 0.0, "dropped_episodes": 0})
        s["episodes"] += 1
        s["hours"] += cols["duration_s"][i] / 3600
        s["kept_h"] += cols["kept_s"][i] / 3600
        for r in DROP_REASONS:
            s[f"{r}_h"] += cols[f"{r}_s"][i] / 3600
        if cols["decision"][i] == "uncurated":
            s["uncurated_h"] += cols["duration_s"][i] / 3600
        s["dropped_episodes"] += cols["decision"][i] == "drop"
    return [out[k] for k in sorted(out)]


def examples(decisions: pa.Table, n: int = 3) -> list[dict]:
    """A few episodes of each drop reason (key, reason, spans in seconds or the episode kept
    instead): what a person checks first in a report."""
    out: list[dict] = []
    rows = decisions.to_pylist()
    for reason in DROP_REASONS:
        mine = [r for r in rows if r["reason"] and reason in r["reason"].split("+")]
        mine.sort(key=lambda r: -(r["duplicate_s"] + r["static_s"] + r["idle_s"]))
        for r in mine[:n]:
            if reason == "duplicate":
                what = f"duplicate of {r['duplicate_of']}" + (f" (cosine {r['similarity']:.3f})"
                                                              if r["similarity"] is not None else "")
            else:
                what = ", ".join(f"{s['start_s']:.1f}-{s['end_s']:.1f} s" for s in r["spans"] if s["reason"] == reason)
            out.append({"reason": reason, "episode": r["episode"], "what": what})
    return out


def dropped_fraction(decisions: pa.Table) -> float:
    total = float(np.sum(decisions["duration_s"].to_numpy()))
    return 1.0 - float(np.sum(decisions["kept_s"].to_numpy())) / total if total else 0.0


def hours_markdown(cset: dict) -> str:
    """A curation set of a catalog summary (`pipeline.catalog`) as markdown: hours kept and
    dropped per source and why, then a few examples (episode keys and spans)."""
    head = (f"### Curation set `{cset['id']}`: {cset['curated']}/{cset['episodes']} episodes curated\n\n"
            "| source | hours | kept | duplicate | static | idle | uncurated | episodes dropped |\n"
            "|---|---|---|---|---|---|---|---|\n")
    rows = "".join(f"| {s['source']} | {s['hours']:.4f} | {s['kept_h']:.4f} | {s['duplicate_h']:.4f} | "
                   f"{s['static_h']:.4f} | {s['idle_h']:.4f} | {s['uncurated_h']:.4f} | {s['dropped_episodes']} |\n"
                   for s in cset["sources"])
    ex = "".join(f"- {e['reason']}: `{e['episode']}` {e['what']}\n" for e in cset["examples"])
    return head + rows + ("\nExamples:\n\n" + ex if ex else "")
