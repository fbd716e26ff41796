"""The chain's HTML report reads as a reader needs it: the success rate first, stage 1's one-off
held-out metrics beside their controls, every bar labelled, the rollout videos linked, and no
path of the machine that made it. (Incidents from opening the demo's report in a browser.)"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from pipeline.catalog import summarize
from pipeline.evaluation.report import write_report
from pipeline.evaluation.results import EpisodeResult, success_figure
from pipeline.evaluation.results import write_report as write_results
from schemas.cards import PolicyCard, StoreRef
from tests.stores import ENCODER, SynthSource, write_store

LAM_METRICS = {"forward_mse": 0.2413, "copy_mse": 0.2520, "zero_z_mse": 0.2388, "forward_over_copy": 0.957,
               "z_explains": -0.24, "shuffle_episode_increase": 1.7e-4, "probe_r2_z": 0.41, "probe_r2_pca": 0.22,
               "probe_pairs_train": 23.0, "heldout_pairs": 8.0, "heldout_episodes": 2.0}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.links: list[str] = []
        self.table_heads: list[str] = []
        self._tag: str | None = None

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "a":
            self.links.append(dict(attrs)["href"])

    def handle_data(self, data):
        if self._tag in ("h2", "th"):
            (self.headings if self._tag == "h2" else self.table_heads).append(data.strip())

    def handle_endtag(self, tag):
        self._tag = None


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    """A report of a store, a LaWM's metrics and an evaluation in which one task never succeeds."""
    root = tmp_path_factory.mktemp("report")
    store = str(root / "store")
    write_store(store, [SynthSource("bot", episodes=2, seconds=1.0)])
    ev = root / "runs" / "policy" / "eval"
    ev.mkdir(parents=True)
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    episodes = [EpisodeResult("reach-v3", 0, 50, 0, 1, 2, True, 1, 1.0, 0.1, frames),
                EpisodeResult("push-v3", 0, 50, 0, 2, 2, False, 1, 0.0, 0.1, frames)]
    card = PolicyCard(lawam_version="0", created_at="now", store=StoreRef(uri=store, version="v0"), encoder=ENCODER,
                      token_shape=(4, 16), config={}, steps=1, wall_time_s=0.0, metrics={}, weights_sha256="x",
                      action_dim=4, horizon=4, vocab=[])
    write_results(ev, episodes, settings={"video": True}, card=card, policy=str(root / "runs" / "policy"),
                  latency=None, video_fps=10, seconds=1.0, rollout_seconds=1.0)
    lam = root / "runs" / "lam"
    lam.mkdir()
    stages = [{"stage": "ingest", "items": 2, "unit": "episodes", "seconds": 1.0, "throughput": "2 episodes/s"}]
    path = write_report(root / "report.html", summarize(store), stages, lam_dir=lam, lam_metrics=LAM_METRICS,
                        eval_dir=ev, title="lawam: test")
    return path, path.read_text()


def test_the_success_rate_comes_first(report):
    _, html = report
    page = _Page()
    page.feed(html)
    assert page.headings[0] == "Closed-loop success", page.headings
    lead = re.search(r"<p class='lead'>(.*?)</p>", html).group(1)
    assert "50%" in lead and "1/2 held-out episodes" in lead and html.index(lead) < html.index("Store ")


def test_stage_1_metrics_are_a_table_beside_their_controls(report):
    _, html = report
    page = _Page()
    page.feed(html)
    assert {"LaWM (z)", "copy f_t", "z = 0", "PCA of f_t"} <= set(page.table_heads)
    assert re.search(r"forward error.*?0\.2413</td><td class=\"n\">0\.252</td><td class=\"n\">0\.2388", html)
    assert re.search(r"linear probe.*?0\.41</td><td></td><td></td><td class=\"n\">0\.22</td>", html)


def test_a_zero_bar_is_labelled_and_the_rollouts_are_linked_relative_to_the_page(report):
    path, html = report
    assert re.search(r"push-v3</td><td>0/1</td><td><span class=\"bar\" style=\"width:0px\"></span>0%</td>", html)
    page = _Page()
    page.feed(html)
    assert sorted(page.links) == ["runs/policy/eval/rollout-push-v3.mp4", "runs/policy/eval/rollout-reach-v3.mp4"]
    assert all((path.parent / link).stat().st_size > 0 for link in page.links)
    fig = success_figure({"push-v3": {"success_rate": 0.0, "ci95": [0.0, 0.79]}},
                         {"success_rate": 0.0, "episodes": 1}, "t")
    assert [t.get_text() for t in fig.axes[0].texts] == ["0%"]  # the PNG's 0% bar says so too


def test_no_path_of_the_machine_is_shown(report):
    path, html = report
    assert str(path.parent) not in html and "/tmp" not in html
    assert "<code>store</code>" in html and "<code>runs/lam</code>" in html
