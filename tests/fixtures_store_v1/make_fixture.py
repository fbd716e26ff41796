"""Writes tests/fixtures_store_v1/store: a layout-1 feature store, as lawam wrote them before layout 2
(commit 9dd1e08 of main; regenerated with commit d162823 of main, whose layout-1 stores also
hold curation sets), and expected.json, what that lawam read back from it.

Run with a layout-1 checkout first on the path (this file is kept as the record of how the
fixture was made; the current lawam cannot run it):

    PYTHONPATH=/path/to/layout-1/lawam python tests/fixtures_store_v1/make_fixture.py
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from pipeline.store import CurationSet, CurationWriter, FeatureStore, LabelWriter, StoreWriter
from schemas import STORE_LAYOUT_VERSION
from schemas.identity import SamplingParams
from schemas.records import EpisodeRef
from tests.stores import ENCODER, SynthSource, write_store

assert STORE_LAYOUT_VERSION == 1, "run with a layout-1 lawam first on PYTHONPATH"
HERE = Path(__file__).resolve().parent
uri = str(HERE / "store")
shutil.rmtree(uri, ignore_errors=True)
ARM, CAM = SynthSource("arm", fps=5.0, episodes=3, seconds=2.0), SynthSource("cam", kind="human", fps=4.0, episodes=2,
                                                                             seconds=2.0)
v1 = write_store(uri, [ARM])
v2 = write_store(uri, [CAM])
v3 = write_store(uri, [ARM], content="v2", only={"arm/ep001"})  # redone: a third store_version
with StoreWriter.open(uri, encoder=ENCODER) as w:  # a quarantined episode and a files table
    bad = EpisodeRef(source="cam", episode_id="broken.mp4", kind="human", uri="/synth/cam/broken.mp4",
                     content_hash="x")
    w.quarantine(bad, "CorruptVideoError: moov atom not found", SamplingParams(fps=4.0, size=32))
    w.remember_files([{"uri": "/synth/cam/broken.mp4", "size": 10, "mtime_ns": 1, "ctime_ns": 1, "inode": 7,
                       "etag": None, "digest": "d" * 16, "hashed_at_ns": 10**18}])
    v4 = w.commit("quarantine")
store = FeatureStore.open(uri)
with LabelWriter.open(uri, "lam-000000000001", {"dim": 2, "k_seconds": 0.2}) as lw:
    for key, h, n in zip(store.keys.tolist(), store.episodes()["content_hash"].to_pylist(),
                         store.episodes()["frames"].to_pylist(), strict=True):
        if key != "cam/ep001":  # one episode left unlabelled
            lw.put(key, h, np.full((n - 1, 2), len(key), np.float32), 1)
    v5 = lw.commit("labels")
store = FeatureStore.open(uri)
with CurationWriter.open(uri, "cur-000000000001", {"config": {"fixture": True}, "dim": 3}) as cw:
    cw.set_centre(np.zeros(4, np.float32), np.ones(4, np.float32))
    for i, (key, h, n) in enumerate(zip(store.keys.tolist(), store.episodes()["content_hash"].to_pylist(),
                                        store.episodes()["frames"].to_pylist(), strict=True)):
        if key != "cam/ep000":  # one episode left uncurated
            spans = [(1, 3, "static")] if key == "arm/ep002" else []
            cw.put_episode(key, h, np.full(n, i, np.float16), np.eye(3, dtype=np.float16)[i % 3], spans)
    cw.set_group("arm/ep002", "arm/ep000", 0.99)  # a duplicate of arm/ep000
    cw.set_group("arm/ep000", "arm/ep000", 0.99)
    v6 = cw.commit("curation")
store = FeatureStore.open(uri)
cur = CurationSet.open(store, "cur-000000000001")
expected = {
    "versions": {"v1": v1, "v2": v2, "v3": v3, "v4": v4, "v5": v5, "v6": v6},
    "curation": {"keys": sorted(cur.keys), "dropped": sorted(cur.dropped_duplicates().tolist()),
                 "spans": {k: [list(s) for s in cur.spans(k)] for k in sorted(cur.keys)},
                 "motion": {k: cur.motion(k).tolist() for k in sorted(cur.keys)}},
    "catalog": [{k: (str(v) if k in ("failed_since", "ingested_at") else v) for k, v in r.items()}
                for r in store.catalog().to_pylist()],
    "features_sha256": {k: hashlib.sha256(store.features(k).tobytes()).hexdigest() for k in store.keys.tolist()},
    "v1_keys": FeatureStore.open(uri, v1).keys.tolist(),
}
(HERE / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True))
(Path(uri) / ".lock").unlink(missing_ok=True)
print(json.dumps(expected["versions"]))
