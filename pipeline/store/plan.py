"""Which episode refs an ingest must do: new, changed, held or already committed.

Promise (DESIGN.md, "Feature store": incremental): an episode is (re)done exactly when its
ingest hash — its bytes and how it is sampled — differs from the one committed for its key;
unchanged episodes are skipped before anything is decoded, and so are quarantined ones whose
input did not change (unless asked to retry them). An unchanged episode whose instruction text
changed (an edited manifest) is retitled: its row is rewritten in the next commit, its
features are not.

Planning a refresh of a million refs is one pass: the refs' keys are joined to the index's live
keys in Arrow (a hash join in C++), their ingest hashes computed with the JSON spelled once
per sampling (`SamplingParams.ingest_hasher`) and compared as arrays, and the refs sorted into
the plan's lists by mask; no Python object per committed episode is built, and the Python
work per ref is its key, its hash and its instruction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
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
    return _hasher(params)(ref.content_hash)


@lru_cache(maxsize=256)
def _hasher(params: SamplingParams) -> Callable[[str], str]:
    """`SamplingParams.ingest_hasher` of each sampling, made once (a writer hashes per episode)."""
    return params.ingest_hasher()


@dataclass
class Plan:
    todo: list[EpisodeRef]  # new, changed, or quarantined and retried
    skipped: list[EpisodeRef]  # already committed with the same ingest hash
    retitled: list[EpisodeRef] = field(default_factory=list)  # skipped, but their instruction changed
    held: list[EpisodeRef] = field(default_factory=list)  # quarantined with this same input: not retried
    # Stored index row of each todo / retitled ref's committed version (-1: none): the row its
    # new one supersedes.
    rows: dict[str, int] = field(default_factory=dict)


def ingest_hashes(refs: list[EpisodeRef], params_for: Callable[[EpisodeRef], SamplingParams]) -> pa.Array:
    """Each ref's ingest hash, one pass (`SamplingParams.ingest_hasher` made once per sampling,
    looked up again only when the sampling object changes from one ref to the next)."""
    last: list = [None, None]  # (sampling, its hasher)

    def one(ref: EpisodeRef) -> str:
        params = params_for(ref)
        if params is not last[0]:
            last[:] = params, _hasher(params)
        return last[1](ref.content_hash)

    return _strings(refs, one)


_BATCH = 65536  # refs turned into Python strings at a time: a million refs never hold a million at once


def _strings(refs: list[EpisodeRef], get: Callable[[EpisodeRef], str | None]) -> pa.Array:
    """`get(ref)` of every ref as one Arrow string array, built a batch of refs at a time."""
    parts = [pa.array([get(ref) for ref in refs[i : i + _BATCH]], pa.string()) for i in range(0, len(refs), _BATCH)]
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


def plan(index: EpisodeIndex, refs: list[EpisodeRef], params_for: Callable[[EpisodeRef], SamplingParams], *,
         retry_quarantined: bool = False) -> Plan:
    """Sort `refs` against the live rows of `index` (see the module's promise)."""
    result = Plan([], [])
    if not refs:
        return result
    live = index.live()
    committed = index.read(["source", "episode_id", "content_hash", "status", "instruction"], rows=live)
    keys = _strings(refs, attrgetter("key"))
    at = pc.index_in(keys, value_set=episode_keys(committed["source"], committed["episode_id"]))
    found = at.is_valid().to_numpy(zero_copy_only=False)
    idx = at.fill_null(0)
    same = np.zeros(len(refs), bool)
    ok = np.zeros(len(refs), bool)
    retitle = np.zeros(len(refs), bool)
    if committed.num_rows:
        mine = ingest_hashes(refs, params_for)
        same = found & pc.equal(committed["content_hash"].take(idx), mine).to_numpy(zero_copy_only=False)
        status = committed["status"].take(idx)
        ok = pc.equal(status, str(EpisodeStatus.OK)).to_numpy(zero_copy_only=False)
        was = committed["instruction"].take(idx).fill_null("\x00")
        now = _strings(refs, attrgetter("instruction")).fill_null("\x00")
        retitle = same & ok & ~pc.equal(was, now).to_numpy(zero_copy_only=False)
    stored = np.where(found, live[idx.to_numpy()], -1) if len(live) else np.full(len(refs), -1)
    skipped, held = same & ok, same & ~ok & (not retry_quarantined)
    todo = ~skipped & ~held
    result.skipped = _pick(refs, skipped)
    result.retitled = _pick(refs, retitle)
    result.held = _pick(refs, held)
    result.todo = _pick(refs, todo)
    mark = retitle | todo  # the rows their new ones supersede (a few: what changed)
    result.rows = {ref.key: row for ref, row in zip(_pick(refs, mark), stored[mark].tolist(), strict=True)}
    return result


def _pick(refs: list[EpisodeRef], mask: np.ndarray) -> list[EpisodeRef]:
    """refs where `mask`, in order (all of them without a Python test per ref)."""
    if mask.all():
        return list(refs)
    return [refs[i] for i in np.flatnonzero(mask).tolist()]
