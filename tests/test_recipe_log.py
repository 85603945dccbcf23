"""The recipe log in docs/results.md is regenerated from the committed development reports."""

import dataclasses
import glob
import json
import os

import pytest

from atn_tf import recipe_log
from atn_tf.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dev(name, date, model="time_only", **cfg):
    config = dataclasses.asdict(TrainConfig(model=model, train_steps=300, lr_decay_steps=100, image_size=64,
                                            width=16, lstm_units=128, val_fraction=0.2, eval_every=100, **cfg))
    curve = [{"step": 100, "uf1": 0.3, "uar": 0.4, "per_database_uf1": {"casme2": 0.1, "samm": 0.2, "smic": 0.3}},
             {"step": 200, "uf1": 0.5, "uar": 0.5, "per_database_uf1": {"casme2": 0.4, "samm": 0.5, "smic": 0.6}}]
    return {"kind": "development", "experiment": name, "date": date, "folds": ["casme2/sub01"],
            "config": config, "num_val_samples": 10, "curve": curve, "best": curve[1], "final": curve[1]}


def test_log_lists_every_recipe_in_run_order_with_its_changes(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "b.json").write_text(json.dumps(_dev("second", "2026-12-01T02:00:00", input_norm=True)))
    (dev / "a.json").write_text(json.dumps(_dev("first", "2026-12-01T01:00:00")))
    (dev / "c.json").write_text(json.dumps(_dev("again", "2026-12-01T03:00:00", input_norm=True, seed=1)))
    out = tmp_path / "results.md"
    out.write_text("# Results\n\nkept\n")
    body = recipe_log.update(str(dev), str(out))
    rows = [line for line in body.splitlines() if line.startswith(("| 1 ", "| 2 ", "| 3 "))]
    assert "first" in rows[0] and "(the base recipe)" in rows[0]
    assert "second" in rows[1] and "--input_norm" in rows[1] and "0.400 / 0.500 / 0.600" in rows[1]
    assert "--seed" not in rows[1] and "again" in rows[2] and "--input_norm (--seed=1)" in rows[2]
    text = out.read_text()
    assert "kept" in text and text.count(recipe_log.BEGIN) == 1
    recipe_log.update(str(dev), str(out))                 # idempotent
    assert out.read_text() == text.replace(text, out.read_text()) and out.read_text().count(recipe_log.BEGIN) == 1
    (dev / "d.json").write_text("{}")
    with pytest.raises(ValueError, match="d.json: not a development report"):
        recipe_log.load(str(dev))


def test_flow_image_rows_from_before_the_mirror_fix_are_marked(tmp_path):
    """Same flags, different mirror: a flow-image model's row run before the fix says so."""
    dev = tmp_path / "dev"
    dev.mkdir()
    flow = dict(model="flow_only", augment=True)
    (dev / "a.json").write_text(json.dumps(_dev("flow_old", "2026-12-04T01:00:00+00:00", **flow)))
    (dev / "b.json").write_text(json.dumps(_dev("flow_new", "2026-12-05T02:00:00+00:00", **flow)))
    (dev / "c.json").write_text(json.dumps(_dev("time_old", "2026-12-04T02:00:00+00:00", augment=True)))
    (dev / "d.json").write_text(json.dumps(_dev("flow_noaug", "2026-12-04T03:00:00+00:00", model="flow_only",
                                                augment=False)))
    rows = recipe_log.table(recipe_log.load(str(dev))).splitlines()[2:]
    mark = recipe_log.OLD_MIRROR_MARK
    assert [mark in r for r in rows] == [True, False, False, False]     # date order: old, time, noaug, new
    assert "flow_old" + mark in rows[0] and "flow_new" in rows[3]


def test_committed_log_matches_the_committed_reports():
    dev_dir = os.path.join(ROOT, "docs", "results", "dev")
    if not glob.glob(os.path.join(dev_dir, "*.json")):
        pytest.skip("no development reports committed")
    reports = recipe_log.load(dev_dir)
    text = open(os.path.join(ROOT, "docs", "results.md"), encoding="utf-8").read()
    assert recipe_log.table(reports) in text


def test_probe_floor_rows_come_from_the_probe_reports_on_the_same_folds(tmp_path):
    dev = tmp_path / "dev"
    (dev / "probes").mkdir(parents=True)
    (dev / "a.json").write_text(json.dumps(_dev("first", "2026-12-01T01:00:00")))
    probe = {"kind": "development_probe", "probe": "flow_seq", "folds": ["casme2/sub01"], "uf1": 0.721,
             "num_val_samples": 10,
             "uar": 0.771, "per_database_uf1": {"casme2": 0.846, "samm": 0.555, "smic": 0.679}}
    (dev / "probes" / "probe_flow_seq.json").write_text(json.dumps(probe))
    out = tmp_path / "results.md"
    body = recipe_log.update(str(dev), str(out))
    assert "| flow_seq | fixed | 10 | 0.721 | 0.771 | 0.846 / 0.555 / 0.679 |" in body
    (dev / "probes" / "probe_rotating_flow_seq.json").write_text(json.dumps(dict(probe, inner_split="rotating")))
    body = recipe_log.update(str(dev), str(out))
    assert body.index("| flow_seq | rotating |") < body.index("| flow_seq | fixed |")   # current split first
    (dev / "probes" / "probe_rotating_flow_seq.json").unlink()
    (dev / "probes" / "probe_flow_seq.json").write_text(json.dumps(dict(probe, folds=["samm/006"])))
    with pytest.raises(ValueError, match="development folds"):
        recipe_log.update(str(dev), str(out))
    (dev / "probes" / "probe_flow_seq.json").write_text(json.dumps(dict(probe, kind="development")))
    with pytest.raises(ValueError, match="not a probe development report"):
        recipe_log.update(str(dev), str(out))


def test_seeds_table_averages_each_recipe_over_its_seeds(tmp_path):
    """Rows with the same flags on the rotating split are one recipe: one entry per seed (a
    repeated seed counts with its latest row), the mean and sd of their last-step UF1;
    single-seed recipes and fixed-split rows are left out."""
    def dev(name, hour, uf1, split="rotating", **cfg):
        r = _dev(name, f"2026-12-01T{hour:02d}:00:00", input_norm=True, **cfg)
        r["final"] = dict(r["final"], uf1=uf1)
        r["inner_split"] = split
        return r

    rows = [dev("a", 1, 0.70), dev("a_seed1", 2, 0.60, seed=1), dev("a_seed1_again", 3, 0.64, seed=1),
            dev("b", 4, 0.50, dropout=0.3), dev("c", 5, 0.90, split="fixed"), dev("c_seed1", 6, 0.10, split="fixed",
                                                                              seed=1)]
    other_cpu = [dict(dev(f"a_xeon{s}", 7 + s, 0.8, seed=s), machine="Intel Xeon, 2 logical CPUs") for s in (0, 1)]
    # fitted on half the training subjects (--train_subjects): another recipe, named so
    half = [dict(dev(f"a_half{s}", 9 + s, 0.5, seed=s), train_subjects=0.5) for s in (0, 1)]
    lines = recipe_log.seeds_table(rows + other_cpu + half).splitlines()
    assert len(lines) == 5                      # header, rule, recipe a on each CPU, recipe a on half
    assert "| — | 2 | 1, 3 | 0.700 / 0.640 | 0.670 ± 0.042 |" in lines[2] and "--input_norm" in lines[2]
    assert "--train_subjects" not in lines[2]
    assert "| Intel Xeon | 2 | 7, 8 | 0.800 / 0.800 | 0.800 ± 0.000 |" in lines[3]
    assert "--input_norm --train_subjects=0.5 | — | 2 | 9, 10 | 0.500 / 0.500 |" in lines[4]
    assert "--train_subjects=0.5 (--seed=1) |" in recipe_log.table(half).splitlines()[3]
    from atn_tf.evaluation.reports import cpu
    assert [cpu({"machine": m}) for m in ("AMD EPYC, 2 logical CPUs", "2 cores (AMD EPYC)", {"cpu": "AMD EPYC"}, "")] \
        == ["AMD EPYC", "AMD EPYC", "AMD EPYC", "—"]
    # grouped by the CPU's model, not its clock (the same Xeon names itself both ways)
    assert cpu({"machine": "Intel(R) Xeon(R) Processor @ 2.80GHz, 2 logical CPUs"}) == "Intel(R) Xeon(R) Processor"
