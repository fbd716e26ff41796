"""Which episode refs an ingest must do: new, changed, held or already committed.

Promise (DESIGN.md, "Feature store": incremental): an episode is (re)done exactly when its
ingest hash — its bytes and how it is sampled — differs from the one committed for its key;
unchanged episodes are skipped before anything is decoded, and so are quarantined ones whose
input did not change (unless asked to retry them). An unchanged episode whose instruction text
changed (an edited manifest) is retitled: its row is rewritten in the next commit, its
features are not.

Planning a refresh of a million refs is one pass: the refs' keys are joined to the index's live
keys in Arrow (a hash join in C++), their ingest hashes computed with the JSON spelled once
per sampling (`SamplingParams.ingest_hasher`) and compared as arrays; no Python object per
committed episode is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.store.index import EpisodeIndex, episode_keys
from schemas import EpisodeStatus
from schemas.identity import SamplingParams

if TYPE_CHECKING:  # the store imports no source adapter: trainers never load h5py or LeRobot parsing
    from schemas.records import EpisodeRef


def ingest_hash(ref: EpisodeRef, params: SamplingParams) -> str:
    """What decides whether an episode must be (re)done: its bytes and how it is sampled."""
    return params.ingest_hash(ref.content_hash)


@dataclass
class Plan:
    todo: list[EpisodeRef]  # new, changed, or quarantined and retried
    skipped: list[EpisodeRef]  # already committed with the same ingest hash
    retitled: list[EpisodeRef] = field(default_factory=list)  # skipped, but their instruction changed
    held: list[EpisodeRef] = field(default_factory=list)  # quarantined with this same input: not retried
    # Stored index row of each todo / retitled ref's committed version (-1: none): the row its
    # new one supersedes.
    rows: dict[str, int] = field(default_factory=dict)


def ingest_hashes(refs: list[EpisodeRef], params_for: Callable[[EpisodeRef], SamplingParams]) -> list[str]:
    """Each ref's ingest hash, one pass (`SamplingParams.ingest_hasher` made once per sampling)."""
    hashers: dict[SamplingParams, Callable[[str], str]] = {}
    out = []
    for ref in refs:
        params = params_for(ref)
        hasher = hashers.get(params)
        if hasher is None:
            hasher = hashers[params] = params.ingest_hasher()
        out.append(hasher(ref.content_hash))
    return out


def plan(index: EpisodeIndex, refs: list[EpisodeRef], params_for: Callable[[EpisodeRef], SamplingParams], *,
         retry_quarantined: bool = False) -> Plan:
    """Sort `refs` against the live rows of `index` (see the module's promise)."""
    result = Plan([], [])
    if not refs:
        return result
    live = index.live()
    committed = index.read(["source", "episode_id", "content_hash", "status", "instruction"], rows=live)
    keys = episode_keys(pa.array([r.source for r in refs], pa.string()),
                        pa.array([r.episode_id for r in refs], pa.string()))
    at = pc.index_in(keys, value_set=episode_keys(committed["source"], committed["episode_id"]))
    found = at.is_valid().to_numpy(zero_copy_only=False)
    idx = at.fill_null(0)
    same = np.zeros(len(refs), bool)
    ok = np.zeros(len(refs), bool)
    retitle = np.zeros(len(refs), bool)
    if committed.num_rows:
        mine = pa.array(ingest_hashes(refs, params_for), pa.string())
        same = found & pc.equal(committed["content_hash"].take(idx), mine).to_numpy(zero_copy_only=False)
        status = committed["status"].take(idx)
        ok = pc.equal(status, str(EpisodeStatus.OK)).to_numpy(zero_copy_only=False)
        was = committed["instruction"].take(idx).fill_null("\x00")
        now = pa.array([r.instruction for r in refs], pa.string()).fill_null("\x00")
        retitle = same & ok & ~pc.equal(was, now).to_numpy(zero_copy_only=False)
    stored = (np.where(found, live[idx.to_numpy()], -1) if len(live) else np.full(len(refs), -1)).tolist()
    for ref, s, o, r, row in zip(refs, same.tolist(), ok.tolist(), retitle.tolist(), stored, strict=True):
        if s and o:
            result.skipped.append(ref)
            if r:
                result.retitled.append(ref)
                result.rows[ref.key] = row
        elif s and not retry_quarantined:
            result.held.append(ref)
        else:
            result.todo.append(ref)
            result.rows[ref.key] = row
    return result
