"""The development rule (atn_tf.evaluation.dev_rule): pairing by seed, the four verdicts, bad input."""

import glob
import json
import os
import subprocess
import sys

import pytest

from atn_tf.evaluation import dev_rule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV_DIR = os.path.join(ROOT, "docs", "results", "dev")


def report(tmp_path, name, seed, uf1, **changes):
    body = {"kind": "development", "protocol": "cde", "inner_split": "rotating", "num_val_samples": 442,
            "folds": ["casme2/sub01", "samm/007"], "final": {"uf1": uf1, "step": 400},
            "config": {"seed": seed, "val_fraction": 0.2, "data_dir": "data/tfrecords/x"}}
    for key, value in changes.items():
        if key in body["config"]:
            body["config"][key] = value
        else:
            body[key] = value
    path = tmp_path / f"{name}_s{seed}.json"
    path.write_text(json.dumps(body))
    return dev_rule.DevRun.load(str(path))


def runs(tmp_path, name, values, first_seed=8):
    return [report(tmp_path, name, first_seed + i, v) for i, v in enumerate(values)]


BAR = [0.770, 0.780, 0.760, 0.770, 0.775, 0.765, 0.770, 0.780]


def test_passes_when_mean_and_count_hold(tmp_path):
    gains = [0.010, 0.000, 0.005, -0.002, 0.004, 0.006, -0.001, 0.010]       # mean +0.004, 6 of 8
    v = dev_rule.judge(runs(tmp_path, "bar", BAR), runs(tmp_path, "c", [b + g for b, g in zip(BAR, gains)]))
    assert v.status == "passes", v.reason
    assert "level or better on 6 of 8" in v.reason


@pytest.mark.parametrize("gains, why", [
    ([0.003] * 8, "mean gain +0.0030"),                                       # every seed up, mean too small
    ([0.030, 0.030, 0.030, -0.001, -0.001, -0.001, -0.001, 0.000], "4 of 8"),  # mean large, too few seeds
])
def test_fails_on_either_criterion(tmp_path, gains, why):
    v = dev_rule.judge(runs(tmp_path, "bar", BAR), runs(tmp_path, "c", [b + g for b, g in zip(BAR, gains)]))
    assert v.status == "fails" and why in v.reason


def test_stopped_on_two_of_the_first_four_below(tmp_path):
    v = dev_rule.judge(runs(tmp_path, "bar", BAR), runs(tmp_path, "c", [0.780, 0.770, 0.750]))
    assert v.status == "stopped"
    assert v.candidate[3:] == (None,) * 5


def test_pending_until_every_seed_is_run(tmp_path):
    v = dev_rule.judge(runs(tmp_path, "bar", BAR), runs(tmp_path, "c", [0.780, 0.770]))
    assert v.status == "pending" and "2 of 8 seeds run" in v.reason
    assert "| candidate | 0.780 | 0.770 | — |" in v.table()


def test_fails_once_the_count_cannot_be_reached(tmp_path):
    up, down = 0.01, -0.01          # one of the first four below: not stopped
    three_of_six = [up, up, down, up, down, down]
    v = dev_rule.judge(runs(tmp_path, "bar", BAR), runs(tmp_path, "a", [b + g for b, g in zip(BAR, three_of_six)]))
    assert v.status == "pending", v.reason              # 3 + the 2 seeds left can still make 5
    v = dev_rule.judge(runs(tmp_path, "bar", BAR),
                       runs(tmp_path, "b", [b + g for b, g in zip(BAR, three_of_six + [down])]))
    assert v.status == "fails" and "decided after 7 of 8 seeds: level or better on 3, so at most 4 of 8" in v.reason


def test_level_is_equal_uf1(tmp_path):
    v = dev_rule.judge(runs(tmp_path, "bar", BAR[:4]), runs(tmp_path, "c", [b + 0.004 for b in BAR[:3]] + [BAR[3]]),
                       dev_rule.Rule(min_gain=0.003, min_level=4))
    assert v.status == "passes", v.reason


def test_refuses_unpaired_runs(tmp_path):
    bar, rule = runs(tmp_path, "bar", BAR[:2]), dev_rule.Rule(min_level=1)
    other = report(tmp_path, "c", 8, 0.8, val_fraction=0.3)
    with pytest.raises(ValueError, match=r"c_s8\.json: not the same development partition.*config\.val_fraction"):
        dev_rule.judge(bar, [other], rule)
    with pytest.raises(ValueError, match=r"seed 3 has no run in --bar"):
        dev_rule.judge(bar, [report(tmp_path, "c", 3, 0.8)], rule)
    with pytest.raises(ValueError, match="seed 8 twice"):
        dev_rule.judge(bar + [report(tmp_path, "again", 8, 0.7)], [], rule)
    with pytest.raises(ValueError, match=r"min_level=3: must be in 1\.\.2"):
        dev_rule.judge(bar, [], dev_rule.Rule(min_level=3))


def test_seeds_fixed_in_advance_let_the_bar_run_beside_the_candidate(tmp_path):
    seeds = range(8, 16)
    bar = runs(tmp_path, "bar", BAR[:2])                       # seeds 8, 9 done; the rest still running
    v = dev_rule.judge(bar, runs(tmp_path, "c", [0.790, 0.790, 0.790]), seeds=seeds)
    assert v.status == "pending" and "2 of 8 seeds run" in v.reason
    assert "| bar | 0.770 | 0.780 | — |" in v.table() and "| candidate | 0.790 | 0.790 | 0.790 | — |" in v.table()
    assert "| gain | +0.020 | +0.010 | — |" in v.table() and v.gains == pytest.approx([0.020, 0.010])
    below = dev_rule.judge(bar, runs(tmp_path, "d", [0.760, 0.770]), seeds=seeds)
    assert below.status == "stopped"
    done = dev_rule.judge(runs(tmp_path, "bar", BAR), runs(tmp_path, "e", [b + 0.005 for b in BAR]), seeds=seeds)
    assert done.status == "passes"
    with pytest.raises(ValueError, match=r"bar_s9\.json: seed 9 is not one of --seeds \(8, 10\)"):
        dev_rule.judge(bar, [], seeds=[8, 10], rule=dev_rule.Rule(min_level=1))
    with pytest.raises(ValueError, match=r"min_level=5: must be in 1\.\.3 \(the seeds of --seeds\)"):
        dev_rule.judge(bar, [], seeds=[8, 9, 10])


@pytest.mark.parametrize("content, why", [
    ("{not json", "not a readable development report"),
    (json.dumps({"kind": "cde"}), "not a development report"),
    (json.dumps(["development"]), "not a development report"),
    (json.dumps({"kind": "development", "config": {}}), "development report without"),
])
def test_bad_reports_name_the_file(tmp_path, content, why):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"bad.json: {why}"):
        dev_rule.DevRun.load(str(path))
    with pytest.raises(ValueError, match="missing.json: not a readable development report"):
        dev_rule.DevRun.load(str(tmp_path / "missing.json"))


def test_report_name_is_evaluates():
    from atn_tf.evaluation import evaluate_lib      # (TensorFlow: dev_rule itself does not import it)
    assert dev_rule.DEV_REPORT == evaluate_lib.DEV_REPORT


def test_a_work_dir_stands_for_its_report(tmp_path):
    (tmp_path / "run").mkdir()
    os.rename(tmp_path / report(tmp_path, "x", 8, 0.75).path, tmp_path / "run" / "development.json")
    assert dev_rule.DevRun.load(str(tmp_path / "run")).uf1 == 0.75


def committed(name, seeds):
    paths = [os.path.join(DEV_DIR, f"{name}_s{s}.json") for s in seeds]
    if not all(os.path.exists(p) for p in paths):
        pytest.skip(f"committed development reports {name}_s* not found in {DEV_DIR}")
    return [dev_rule.DevRun.load(p) for p in paths]


def test_the_twenty_fifth_round_as_written():
    """docs/results.md: v16 + --apex_fit=probe, +0.003 and 5 of 8 (fails); --flow_shift=4 stopped."""
    bar = committed("v14fs3", range(8, 16))
    v = dev_rule.judge(bar, committed("v16ap", range(8, 16)))
    assert v.status == "fails" and "mean gain +0.0028, level or better on 5 of 8" in v.reason
    assert dev_rule.judge(bar, committed("v16fs4", range(8, 12))).status == "stopped"


def test_the_twenty_seventh_round_as_written():
    """docs/results.md: against v16 on seeds 24-31, --nobalance --logit_adjust=1 stopped at
    -0.0027; --train_steps=600 --apex_fit=probe stopped after three seeds, judged while the bar ran."""
    bar = committed("v16", range(24, 32))
    v = dev_rule.judge(bar, committed("v16la", range(24, 32)))
    assert v.status == "stopped" and "mean gain so far -0.0027" in v.reason
    early = dev_rule.judge(committed("v16", range(24, 27)), committed("v16sp", range(24, 27)), seeds=range(24, 32))
    assert early.status == "stopped" and "mean gain so far +0.0015" in early.reason


def test_the_twenty_eighth_round_as_written():
    """docs/results.md: against v16 on seeds 24-31, --isda=0.5 passes (+0.0040, 7 of 8) and
    becomes v17; --isda=1, run after it, fails against v16 (+0.0028, 5 of 8); the replication
    on seeds 32-39 is stopped (two of the first four below) at +0.0054 over all eight."""
    bar = committed("v16", range(24, 32))
    v = dev_rule.judge(bar, committed("v16isda", range(24, 32)))
    assert v.status == "passes" and "mean gain +0.0040, level or better on 7 of 8" in v.reason
    v = dev_rule.judge(bar, committed("v16isda1", range(24, 32)))
    assert v.status == "fails" and "mean gain +0.0028, level or better on 5 of 8" in v.reason
    replication = dev_rule.judge(committed("v16", range(32, 40)), committed("v16isda", range(32, 40)))
    assert replication.status == "stopped" and "mean gain so far +0.0054" in replication.reason


def test_the_twenty_ninth_round_as_written():
    """docs/results.md: under the bar raised to +0.008 and 6 of 8, against v16 on seeds 24-31,
    --supcon 0.1 / 0.3, --flow_mixstyle=0.5, --head_distill 1 / 3 and --head_diversity=1 stopped;
    --head_diversity=0.5 fails (+0.0023, 6 of 8)."""
    bar, rule = committed("v16", range(24, 32)), dev_rule.Rule(min_gain=0.008, min_level=6)
    for name, seeds, gain in (("v16sc1", 4, "+0.0017"), ("v16sc3", 4, "+0.0008"), ("v16ms5", 2, "-0.0139"),
                              ("v16hd1", 2, "-0.0138"), ("v16hd3", 2, "-0.0548"), ("v16nc10", 2, "-0.0019")):
        v = dev_rule.judge(bar, committed(name, range(24, 24 + seeds)), rule)
        assert v.status == "stopped" and f"mean gain so far {gain}" in v.reason, name
    v = dev_rule.judge(bar, committed("v16nc5", range(24, 32)), rule)
    assert v.status == "fails" and "mean gain +0.0023, level or better on 6 of 8" in v.reason


def test_the_thirtieth_round_as_written():
    """docs/results.md: the random search's first candidate, rs30_5, stopped against v16 on
    seeds 32-35 (-0.0090, three of four below) under the +0.008 / 6 of 8 rule."""
    rule = dev_rule.Rule(min_gain=0.008, min_level=6)
    v = dev_rule.judge(committed("v16", range(32, 40)), committed("rs30_5", range(32, 36)), rule)
    assert v.status == "stopped" and "3 of the first 4 seeds below" in v.reason
    assert "mean gain so far -0.0090" in v.reason


def test_the_thirty_first_round_as_written():
    """docs/results.md: the flow CNN's shape search's first, --flow_kernel=5 (rs31_4), stopped
    against v16 on seeds 24-27 (+0.0018, seeds 25 and 27 below)."""
    rule = dev_rule.Rule(min_gain=0.008, min_level=6)
    v = dev_rule.judge(committed("v16", range(24, 32)), committed("rs31_4", range(24, 28)), rule)
    assert v.status == "stopped" and "2 of the first 4 seeds below" in v.reason
    assert "mean gain so far +0.0018" in v.reason


@pytest.mark.parametrize("name, gain", [("r40", "-0.0071"), ("r41", "-0.0176")])
def test_the_fortieth_and_forty_first_rounds_as_written(name, gain):
    """docs/results.md: SGD on v16 (r40) and the flow transformer (r41), each stopped against v16
    on seeds 24-25, both below, under the +0.008 / 6 of 8 rule."""
    rule = dev_rule.Rule(min_gain=0.008, min_level=6)
    v = dev_rule.judge(committed("v16", range(24, 32)), committed(name, range(24, 26)), rule)
    assert v.status == "stopped" and "2 of the first 4 seeds below" in v.reason
    assert f"mean gain so far {gain}" in v.reason


def test_cli(tmp_path):
    runs(tmp_path, "bar", BAR[:2])
    runs(tmp_path, "c", [0.9, 0.9])
    cmd = [sys.executable, "-m", "atn_tf.evaluation.dev_rule",
           "--bar=" + ",".join(sorted(glob.glob(str(tmp_path / "bar_s*.json")))),
           "--candidate=" + ",".join(sorted(glob.glob(str(tmp_path / "c_s*.json")))), "--min_level=2"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "**passes**" in out and "| gain | +0.130 | +0.120 |" in out
    out = subprocess.run(cmd + ["--seeds=8,9,10"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "**pending**" in out and "| bar | 0.770 | 0.780 | — |" in out
    bad = subprocess.run(cmd + ["--seeds=8,nine"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "--seeds: 'nine' is not a seed" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run(cmd[:3] + ["--candidate=" + str(tmp_path / "nope.json")], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode == 1 and "nope.json: not a readable development report" in bad.stderr and "Traceback" not in bad.stderr
