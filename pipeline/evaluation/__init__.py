"""Evaluation of a trained policy, the policy passed in as a loader (pipeline never imports model).

- `evaluate` — closed-loop episodes in the simulator on held-out layouts, on Ray workers.
- `latency`  — ms per action chunk at batch 1: the policy alone, and encoder + policy.
- `results`  — the per-episode results, results.json and the success plot.
- `report`   — the self-contained HTML report of a run of the chain.
"""
