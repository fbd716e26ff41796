"""The learning benchmarks keep each encoder numerics' store and cached runs apart: a run
trained on OpenVINO bf16 features is never reported (or reused) as one of torch fp32, and the
names made before runtimes were named keep meaning torch fp32."""

from __future__ import annotations

import json

from benchmarks.bench_lam import cached_runs, summarize
from benchmarks.corpus import numerics_suffix


def test_store_and_run_names_carry_the_numerics_except_the_reference():
    assert numerics_suffix() == numerics_suffix("torch", "fp32") == ""
    assert numerics_suffix("openvino", "bf16") == "-openvino-bf16"
    assert numerics_suffix("openvino", "fp32") == "-openvino-fp32"
    assert numerics_suffix("torch", "bf16") == "-torch-bf16"


def test_report_shows_each_numerics_in_a_row_of_its_own(tmp_path):
    def cache(name: str, numerics: str | None, probe: float) -> None:
        run = {"lever": "action-head", "seed": 0, "headline": {"robot_probe_r2_z": probe}}
        if numerics is not None:  # runs cached before runtimes were named have no field
            run["numerics"] = numerics
        (tmp_path / f"{name}.json").write_text(json.dumps(run))

    cache("action-head-s0-500", None, 0.9)
    cache("action-head-s0-500-openvino-bf16", "-openvino-bf16", 0.8)
    cache("action-head-s0-5000", None, 0.1)  # another step count
    cache("action-head-s0-500-notes", None, 0.2)  # not a numerics suffix

    found = cached_runs(tmp_path, "action-head-s0-500")
    assert [p.name for p in found] == ["action-head-s0-500.json", "action-head-s0-500-openvino-bf16.json"]
    summary = summarize([json.loads(p.read_text()) for p in found])
    assert summary["action-head"]["robot_probe_r2_z"][0] == 0.9
    assert summary["action-head-openvino-bf16"]["robot_probe_r2_z"][0] == 0.8
