"""atn_tf.evaluation.dev_series: seeds run in order, resumed, stopped when the rule decides."""

import json
import os
import subprocess
import sys

import pytest

from atn_tf.evaluation import dev_rule, dev_series

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAR = {8: 0.770, 9: 0.780, 10: 0.760, 11: 0.770}
RULE = dev_rule.Rule(min_level=3)        # of the four seeds above


def _body(seed, uf1):
    return {"kind": "development", "protocol": "cde", "inner_split": "rotating", "num_val_samples": 442,
            "folds": ["casme2/sub01", "samm/007"], "final": {"uf1": uf1, "step": 400},
            "config": {"seed": seed, "val_fraction": 0.2, "data_dir": "data/tfrecords/x"}}


@pytest.fixture
def setup(tmp_path):
    bar = []
    for seed, uf1 in BAR.items():
        path = tmp_path / f"bar_s{seed}.json"
        path.write_text(json.dumps(_body(seed, uf1)))
        bar.append(str(path))
    recipe = tmp_path / "recipe.cfg"
    recipe.write_text("--model=atn_flow\n")
    return bar, str(recipe), str(tmp_path / "runs")


def fake_evaluate(uf1_by_seed, calls, code=0):
    """Stands for `python -m atn_tf.evaluate`: writes the seed's report into --work_dir."""
    def run(cmd, log_path):
        calls.append(cmd)
        flags_ = dict(a[2:].split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
        seed = int(flags_["seed"])
        if code == 0:
            os.makedirs(flags_["work_dir"], exist_ok=True)
            with open(os.path.join(flags_["work_dir"], dev_rule.DEV_REPORT), "w") as f:
                json.dump(_body(seed, uf1_by_seed[seed]), f)
        with open(log_path, "a") as f:
            f.write("ran\n")
        return code
    return run


def test_runs_seeds_in_order_with_the_changes_last_and_stops_when_the_rule_decides(setup):
    bar, recipe, root = setup
    calls = []
    v = dev_series.run_series(bar, recipe, "cand", ["--flow_shift=4", "--dropout=0.2"], root,
                              RULE, run=fake_evaluate({8: 0.76, 9: 0.77, 10: 0.9}, calls),
                              say=lambda _: None)
    assert v.status == "stopped" and v.candidate == (0.76, 0.77, None, None)
    assert len(calls) == 2                     # seeds 10 and 11 never run
    first = calls[0]
    assert first[1:4] == ["-m", "atn_tf.evaluate", f"--flagfile={recipe}"]
    assert dev_rule.DEV_OPTIONS in " ".join(first)
    assert first[-2:] == ["--flow_shift=4", "--dropout=0.2"]
    assert f"--work_dir={os.path.join(root, 'cand_s8')}" in first and "--experiment=cand_s8" in first
    assert os.path.isfile(os.path.join(root, "cand_s8.log"))


def test_passes_after_every_seed_and_resumes_without_running_a_seed_again(setup):
    bar, recipe, root = setup
    uf1 = {s: v + 0.01 for s, v in BAR.items()}
    calls = []
    dev_series.run_series(bar, recipe, "cand", [], root, RULE, run=fake_evaluate(uf1, calls), say=lambda _: None)
    assert [c for c in calls[0] if c.startswith("--seed=")] == ["--seed=8"] and len(calls) == 4
    again = []
    v = dev_series.run_series(bar, recipe, "cand", [], root, dev_rule.Rule(min_level=4),
                              run=fake_evaluate(uf1, again), say=lambda _: None)
    assert v.status == "passes" and again == []


def test_a_run_that_fails_names_its_log(setup):
    bar, recipe, root = setup
    with pytest.raises(dev_series.SeriesError, match=r"cand_s8: .* exited with 1 .*cand_s8\.log"):
        dev_series.run_series(bar, recipe, "cand", [], root, RULE, run=fake_evaluate({}, [], code=1),
                              say=lambda _: None)


@pytest.mark.parametrize("change, why", [
    (dict(recipe="nope.cfg"), "--recipe: nope.cfg not found"),
    (dict(name="a/b"), "without a path separator"),
    (dict(rule=dev_rule.Rule(min_level=9)), "min_level=9: must be in 1..4"),
])
def test_bad_arguments_are_refused_before_any_run(setup, change, why):
    bar, recipe, root = setup
    calls = []
    args = dict(bar=bar, recipe=recipe, name="cand", work_root=root, rule=RULE, run=fake_evaluate({}, calls),
                say=lambda _: None)
    with pytest.raises(ValueError, match=why):
        dev_series.run_series(**{**args, **change})
    assert calls == []


def test_cli_refuses_bad_input_without_a_traceback(setup, tmp_path):
    bar, recipe, root = setup
    base = [sys.executable, "-m", "atn_tf.evaluation.dev_series", "--bar=" + ",".join(bar), "--name=c",
            f"--work_root={root}", "--min_level=3"]
    for extra, why in (([f"--recipe={tmp_path / 'missing.cfg'}"], "missing.cfg not found"),
                       ([f"--recipe={recipe}", "--changes=--x='unclosed"], "error: No closing quotation")):
        out = subprocess.run(base + extra, capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 1 and why in out.stderr and "Traceback" not in out.stderr, out.stderr
