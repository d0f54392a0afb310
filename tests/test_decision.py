"""Did the search decide? Margins and entropies of the architecture weights, and where they are reported."""

import logging
import math

import pytest

from nas_restore.datasets import DataConfig
from nas_restore.decision import DECIDED_MARGIN, decide, decide_choice, decision_of_run
from nas_restore.render_run import render_run
from nas_restore.search import SearchConfig, run_search
from nas_restore.sources import load_genotype
from tests.test_search import TINY_SPACE


def test_uniform_weights_did_not_decide_and_a_clear_winner_did():
    uniform = {"c/2_0": {"conv": 1 / 3, "skip": 1 / 3, "none": 1 / 3},
               "c/2_1": {"conv": 0.34, "skip": 0.33, "none": 0.33}}
    verdict = decide(uniform)
    assert not verdict.decided and verdict.median_entropy == pytest.approx(1.0, abs=1e-3)
    assert "did not decide" in verdict.summary() and "--epochs" in verdict.advice()
    clear = {"c/2_0": {"conv": 0.9, "skip": 0.05, "none": 0.05}, "c/2_1": {"conv": 0.8, "skip": 0.1, "none": 0.1}}
    verdict = decide(clear)
    assert verdict.decided and verdict.median_margin > DECIDED_MARGIN and verdict.median_entropy < 0.7


def test_the_zero_op_is_never_kept_but_counts_in_the_entropy():
    choice = decide_choice("c/2_0", {"none": 0.6, "conv": 0.3, "skip": 0.1})
    assert (choice.kept, choice.runner_up) == ("conv", "skip")
    assert choice.margin == pytest.approx((0.3 - 0.1) * 3)
    expected = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1)) / math.log(3)
    assert choice.entropy == pytest.approx(expected)
    assert decide_choice("only", {"conv": 1.0}) is None  # one candidate: nothing to decide


def test_decision_of_a_run_reads_the_last_step(tmp_path):
    (tmp_path / "alphas.csv").write_text("step,epoch,label,choice,weight\n"
                                         "1,0,a,x,0.5\n1,0,a,y,0.5\n"
                                         "9,1,a,x,0.95\n9,1,a,y,0.05\n")
    verdict = decision_of_run(tmp_path)
    assert verdict.step == 9 and verdict.decided and verdict.choices[0].kept == "x"
    assert decision_of_run(tmp_path / "nowhere") is None
    (tmp_path / "alphas.csv").write_text("step,epoch,label,choice,weight\n")  # spos records no weights
    assert decision_of_run(tmp_path) is None


@pytest.fixture(scope="module")
def barely_moved(tmp_path_factory):
    """One epoch of a tiny DARTS search with the default (small) architecture learning rate."""
    run_dir = tmp_path_factory.mktemp("barely")
    config = SearchConfig(preset="demo", space_settings=TINY_SPACE, epochs=1, batch_size=4,
                          data=DataConfig(patch_size=16, train_items=8, val_items=4), device="cpu",
                          progress=False)
    return run_search(config, run_dir)


def test_a_search_that_barely_moved_says_so_in_the_log_metadata_and_render(barely_moved, tmp_path, caplog):
    meta = load_genotype(barely_moved.genotype_path).metadata["decision"]
    assert meta["decided"] is False and meta["median_entropy"] > 0.99 and len(meta["choices"]) >= 5
    log_text = (barely_moved.run_dir / "search.log").read_text()
    assert "the search did not decide" in log_text and "arc_learning_rate" in log_text
    with caplog.at_level(logging.INFO):
        result = render_run(barely_moved.run_dir, tmp_path / "render", formats=["svg"], use_dot=False,
                            overview=False)
    report = (tmp_path / "render" / "decision.md").read_text()
    assert "did not decide" in report and "| alignment | 2 |" in report
    assert any("did not decide" in m for m in result.messages)
