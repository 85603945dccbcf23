"""The joint random search (atn_tf.evaluation.random_search): draws, flags, ranking, bad input."""

import json
import os
import subprocess
import sys

import pytest

from atn_tf.evaluation import random_search as rs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The thirty-first round's draw (kernel, layers), as docs/results.md lists it.
DRAW31 = [(5, 4), (5, 2), (3, 4), (7, 2), (5, 3), (3, 2), (7, 3), (7, 4)]


def test_draws_are_distinct_in_the_space_and_never_the_recipe():
    space, base = rs.SPACES["v16"], rs.BASELINES["v16"]
    points = rs.draw(space, 50, seed=1, exclude=base)
    assert len({tuple(sorted(p.items())) for p in points}) == 50
    assert all(p != base and all(p[k] in space[k] for k in space) for p in points)
    assert rs.draw(space, 50, seed=1, exclude=base) == points           # a seed fixes the draw
    assert rs.draw(space, 50, seed=2, exclude=base) != points


def test_the_baseline_is_a_point_of_its_space_and_the_v16_recipe():
    for name, space in rs.SPACES.items():
        assert set(rs.BASELINES[name]) == set(space)
        assert all(rs.BASELINES[name][k] in space[k] for k in space)
    from atn_tf.flags_lib import config_from_flagfile
    v16 = config_from_flagfile(os.path.join(ROOT, "experiments", "atn_flow_cde_v16.cfg"))
    for name in ("v16", "v16_flow_cnn"):
        for key, value in rs.BASELINES[name].items():
            assert getattr(v16, key) == value, (name, key)


def test_the_thirty_first_round_as_drawn():
    """docs/results.md, thirty-first round: all eight other shapes of the flow CNN, in this order."""
    assert rs.candidates("v16_flow_cnn", 8, 31, "rs31") == [
        (f"rs31_{i}", f"--flow_kernel={k} --flow_layers={n}" if k != 3 and n != 3 else
         (f"--flow_kernel={k}" if k != 3 else f"--flow_layers={n}"))
        for i, (k, n) in enumerate(DRAW31)]


def test_every_candidate_is_a_valid_config():
    """Each drawn point's flags on top of v16's file build a config (a bad draw would otherwise
    fail mid-search), and the point is what the config holds."""
    from atn_tf.flags_lib import config_from_flagfile
    cfg = os.path.join(ROOT, "experiments", "atn_flow_cde_v16.cfg")
    base = config_from_flagfile(cfg)
    for name, text in rs.candidates("v16", 10, 30, "rs30"):
        changes = dict(f[2:].split("=") for f in text.split())
        got = config_from_flagfile(cfg, **{k: type(getattr(base, k))(v) for k, v in changes.items()})
        for k, v in changes.items():
            assert str(getattr(got, k)) == v, (name, k)


def test_the_thirtieth_round_as_drawn():
    """docs/results.md, thirtieth round: the ten candidates drawn before the first run."""
    cands = rs.candidates("v16", 10, 30, "rs30")
    assert [n for n, _ in cands] == [f"rs30_{i}" for i in range(10)]
    assert cands[0][1] == "--flow_width=96 --head_diversity=0.25 --label_smoothing=0.05 --weight_decay=0.01"
    assert cands[9][1] == "--dropout=0.0 --head_diversity=0.25 --label_smoothing=0.15 --weight_decay=0.01"


def test_flag_text_lists_only_changes():
    assert rs.flag_text({"a": 1, "b": 2}, {"a": 1, "b": 3}) == "--b=2"


def _dev(tmp_path, name, seed, uf1):
    d = tmp_path / f"{name}_s{seed}"
    d.mkdir()
    (d / "development.json").write_text(json.dumps({
        "kind": "development", "protocol": "cde", "inner_split": "rotating", "num_val_samples": 442,
        "folds": ["casme2/sub01"], "final": {"uf1": uf1}, "config": {"seed": seed, "val_fraction": 0.2,
                                                                     "data_dir": "x"}}))


def test_rank_orders_by_mean_and_refuses_a_missing_run(tmp_path):
    for name, vals in (("a", (0.70, 0.80)), ("b", (0.78, 0.78)), ("base", (0.76, 0.76))):
        for s, v in zip((40, 41), vals):
            _dev(tmp_path, name, s, v)
    assert [n for n, _ in rs.rank(["a", "b"], str(tmp_path), [40, 41], "base")] == ["b", "base", "a"]
    with pytest.raises(ValueError, match=r"c_s40: no development.json"):
        rs.rank(["a", "c"], str(tmp_path), [40, 41], "base")


# (space, n, draw seed, prefix, search seeds, the first two as docs/results.md ranks them)
RANKED = [("v16", 10, 30, "rs30", [40, 41], [("rs30_5", 0.7727), ("rs30_8", 0.7696)]),
          ("v16_flow_cnn", 8, 31, "rs31", [42, 43], [("rs31_4", 0.7857), ("rs31_2", 0.7814)])]


@pytest.mark.parametrize("space,n,seed,prefix,seeds,first", RANKED, ids=["thirtieth", "thirty-first"])
def test_the_rounds_as_ranked(space, n, seed, prefix, seeds, first):
    """docs/results.md, thirtieth and thirty-first rounds: the committed runs of the search
    seeds rank the candidates as the tables say, v16 seventh."""
    dev = os.path.join(ROOT, "docs", "results", "dev")
    if not os.path.exists(os.path.join(dev, f"{first[0][0]}_s{seeds[0]}.json")):
        pytest.skip(f"the round's reports are not in {dev}")
    rows = rs.rank([name for name, _ in rs.candidates(space, n, seed, prefix)], dev, seeds, "v16")
    assert [(name, round(m, 4)) for name, m in rows[:2]] == first
    assert [name for name, _ in rows].index("v16") == 6


def test_commands_run_the_recipe_and_every_candidate_on_every_seed():
    cands = rs.candidates("v16", 2, 30, "rs30")
    lines = rs.commands(cands, "experiments/atn_flow_cde_v16.cfg", [40, 41], "v16")
    assert len(lines) == 6 and lines[0].endswith("--experiment=v16_s40 --work_dir=runs/dev/v16_s40")
    assert lines[2].startswith("python -m atn_tf.evaluate --flagfile=experiments/atn_flow_cde_v16.cfg "
                               "--protocol=cde --develop=8 --val_fraction=0.2")
    assert lines[3].endswith("--work_dir=runs/dev/rs30_0_s41 " + cands[0][1])


def test_cli(tmp_path):
    cmd = [sys.executable, "-m", "atn_tf.evaluation.random_search", "--n=3", "--draw_seed=30", "--prefix=x"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert [line.split("\t")[0] for line in out.splitlines()] == ["x_0", "x_1", "x_2"]
    bad = subprocess.run(cmd + ["--space=nope"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "--space='nope': unknown" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run(cmd + [f"--rank_dir={tmp_path}", "--seeds=40"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "x_0_s40: no development.json" in bad.stderr and "Traceback" not in bad.stderr
    out = subprocess.run(cmd + ["--commands=experiments/atn_flow_cde_v16.cfg", "--seeds=40"], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    assert len(out.splitlines()) == 4 and "--work_dir=runs/dev/x_2_s40" in out
    bad = subprocess.run(cmd + ["--commands=nope.cfg", "--seeds=40"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "--commands=nope.cfg: no such experiment file" in bad.stderr
    bad = subprocess.run(cmd + [f"--rank_dir={tmp_path}", "--seeds=forty"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "--seeds: 'forty' is not a seed" in bad.stderr and "Traceback" not in bad.stderr
