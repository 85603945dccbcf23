"""Committed result reports are consistent: metrics recomputed from their own predictions,
folds free of subject overlap, and every deep-model report listed in docs/results.md."""

import glob
import json
import os

import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORTS = sorted(glob.glob(os.path.join(ROOT, "docs", "results", "*.json")))


def _metrics(rows):
    y, p = [r["label"] for r in rows], [r["pred"] for r in rows]
    return (f1_score(y, p, average="macro", labels=[0, 1, 2], zero_division=0),
            recall_score(y, p, average="macro", labels=[0, 1, 2], zero_division=0), accuracy_score(y, p))


@pytest.mark.parametrize("path", REPORTS, ids=[os.path.basename(p) for p in REPORTS])
def test_report_metrics_equal_sklearn_on_its_predictions(path):
    report = json.load(open(path))
    preds = report["predictions"]
    assert report["command"].startswith("python -m atn_tf.")
    assert len({p["sample_id"] for p in preds}) == len(preds) == report["overall"]["n"]
    uf1, uar, acc = _metrics(preds)
    assert report["overall"]["uf1"] == pytest.approx(uf1, abs=1e-9)
    assert report["overall"]["uar"] == pytest.approx(uar, abs=1e-9)
    assert report["overall"]["accuracy"] == pytest.approx(acc, abs=1e-9)
    for db, m in report["per_database"].items():
        uf1, uar, _ = _metrics([p for p in preds if p["database"] == db])
        assert m["uf1"] == pytest.approx(uf1, abs=1e-9) and m["uar"] == pytest.approx(uar, abs=1e-9)
    # A fold never tests a subject (CDE) or database (HDE) other than its own.
    for p in preds:
        held_out = p["database"] if report["protocol"] == "hde" else f"{p['database']}/{p['subject']}"
        assert p["fold"] == held_out


def test_every_deep_report_is_in_the_results_table():
    doc = open(os.path.join(ROOT, "docs", "results.md")).read()
    for path in REPORTS:
        name = os.path.basename(path)
        if name.startswith(("cde_", "hde_")):
            assert f"(results/{name})" in doc, f"{name} missing from docs/results.md (run python -m atn_tf.results_doc)"


FUSED = [p for p in REPORTS if os.path.basename(p).startswith("probe_fused_")]
PROBES = [p for p in REPORTS if os.path.basename(p).startswith("probe_") and p not in FUSED]


def test_the_probe_floor_is_committed_for_every_input_and_protocol():
    names = {os.path.basename(p) for p in PROBES}
    for protocol in ("cde", "hde"):
        for probe in ("flow_seq", "flow_image", "apex", "all"):
            assert f"probe_{protocol}_{probe}.json" in names


@pytest.mark.parametrize("path", PROBES, ids=[os.path.basename(p) for p in PROBES])
def test_probe_report_format_and_command(path):
    import numpy as np

    report = json.load(open(path))
    name = os.path.basename(path)
    assert name == f"probe_{report['protocol']}_{report['probe']}.json"
    assert report["config"] is None and isinstance(report["selection"], str) and report["selection"]
    for key in ("experiment", "date", "machine", "code_version", "complete", "num_folds", "wall_seconds"):
        assert key in report, key
    assert report["complete"] is True and report["num_folds"] == (68 if report["protocol"] == "cde" else 3)
    # the report was written by the command it records
    cmd = report["command"].split()
    assert cmd[:3] == ["python", "-m", "atn_tf.baselines"]
    assert cmd[cmd.index("--probe") + 1] == report["probe"]
    assert cmd[cmd.index("--protocol") + 1] == report["protocol"]
    assert cmd[cmd.index("--output") + 1] == f"docs/results/{name}"
    for p in report["predictions"]:
        assert p["pred"] == int(np.argmax(p["probabilities"]))
    assert len(report["fold_seconds"]) == len(report["folds"]) == report["num_folds"]


@pytest.mark.parametrize("path", FUSED, ids=[os.path.basename(p) for p in FUSED])
def test_a_fusion_of_probes_is_the_mean_of_the_committed_probes_it_names(path):
    """`probe_fused_<protocol>_<inputs>.json`: written by `atn_tf.evaluate --ensemble` over the
    committed probe reports of those inputs; each clip's probabilities are their mean."""
    import numpy as np

    from atn_tf import results_doc

    report = json.load(open(path))
    inputs = results_doc.fused_inputs(report)
    assert os.path.basename(path) == f"probe_fused_{report['protocol']}_{'+'.join(inputs)}.json"
    cmd = report["command"].split()
    assert cmd[:4] == ["python", "-m", "atn_tf.evaluate", "--ensemble"]
    members = [a for a in cmd[4:] if not a.startswith("--")]
    assert sorted(members) == sorted(f"docs/results/probe_{report['protocol']}_{i}.json" for i in inputs)
    probs = {}
    for m in members:
        for p in json.load(open(os.path.join(ROOT, m)))["predictions"]:
            probs.setdefault(p["sample_id"], []).append(p["probabilities"])
    assert len(report["predictions"]) == len(probs)
    for p in report["predictions"]:
        np.testing.assert_allclose(p["probabilities"], np.mean(probs[p["sample_id"]], axis=0), atol=1e-6)


def test_a_late_fusion_model_is_read_against_the_fusion_of_its_branches_probes():
    from atn_tf import results_doc

    cfg = {"fusion": "late", "apex_backbone": "fer_xception", "flow_seq_repr": "cartesian", "flow_sample_norm": True}
    key = "apex_fer+flow_image_std+flow_seq_cartesian"
    assert results_doc.branch_probes("atn_flow", cfg) == key
    assert results_doc.branch_probes("atn_flow", {**cfg, "fusion": "concat"}) == ""
    assert results_doc.branch_probes("flow_only", cfg) == ""          # one branch: nothing to fuse
    assert results_doc.branch_probes("atn", {"fusion": "late"}) == "apex+flow_seq"
    probes = {("cde", "all"): ("p", {}), ("cde", key): ("f", {})}
    assert results_doc.probe_inputs("atn_flow", "cde", probes, cfg)[-1] == key
    assert key not in results_doc.probe_inputs("atn_flow", "hde", probes, cfg)   # none committed for HDE


def test_generated_tables_are_up_to_date():
    from atn_tf import results_doc

    doc = open(os.path.join(ROOT, "docs", "results.md")).read()
    results_dir = os.path.join(ROOT, "docs", "results")
    deep = [p for p in REPORTS if os.path.basename(p).startswith(("cde_", "hde_"))]
    probes = results_doc.load_probes(results_dir)
    for name in (os.path.basename(p) for p in PROBES):
        assert f"(results/{name})" in doc, f"{name} missing from docs/results.md (run python -m atn_tf.results_doc)"
    stale = "docs/results.md is stale: run python -m atn_tf.results_doc"
    assert results_doc.probe_table(probes) in doc, stale
    assert results_doc.table(deep, probes) in doc, stale
    assert results_doc.headline_table(results_doc._deep(deep), probes) in doc, stale


def _fake(tmp, name, experiment, seed, accuracy, protocol="cde", model="atn", members=None, probe=None,
          config_extra=None, deep=True, **extra):
    import numpy as np

    from atn_tf.evaluation import protocols

    rng = np.random.default_rng(seed + 17 * len(name))
    preds = []
    for s in range(9):
        db = ("casme2", "samm", "smic")[s % 3]
        for k in range(4):
            y = k % 3
            pred = y if rng.random() < accuracy else (y + 1) % 3
            prob = [0.1, 0.1, 0.1]
            prob[pred] = 0.8
            preds.append({"sample_id": f"{db}-s{s}-{k}", "database": db, "subject": f"s{s}",
                          "fold": f"{db}/s{s}" if protocol == "cde" else db, "label": y, "pred": pred,
                          "probabilities": prob})
    m = protocols.pooled_metrics([p["label"] for p in preds], [p["pred"] for p in preds],
                                 [p["database"] for p in preds])
    cfg = None if probe or not deep else {"model": model, "seed": seed, "image_size": 64, "width": 16,
                                          "lstm_units": 128, "train_steps": 300, **(config_extra or {})}
    r = {"protocol": protocol, "experiment": experiment, "command": f"python -m atn_tf.evaluate {name}",
         "date": "2026-12-01T00:00:00+00:00", "complete": True, "num_folds": 9, "config": cfg,
         "overall": m["overall"], "per_database": m["per_database"], "predictions": preds, **extra}
    if members:
        r["members"] = [{"experiment": e, "seed": s} for e, s in members]
    if probe:
        r.update(probe=probe, folds=[{"C": 0.01}] * 9, wall_seconds=12.0, selection="rule")
    (tmp / name).write_text(json.dumps(r))
    return r


def test_results_doc_groups_seeds_pairs_probes_and_shows_new_keys(tmp_path):
    import statistics

    from atn_tf import results_doc

    res = tmp_path / "results"
    res.mkdir()
    runs = [_fake(res, f"cde_x_seed{k}.json", f"x_seed{k}", k, acc) for k, acc in enumerate((0.5, 0.7, 0.9))]
    _fake(res, "cde_x_x3.json", "x_x3", 0, 0.8, members=[(f"x_seed{k}", k) for k in range(3)])
    _fake(res, "cde_y.json", "y", 0, 0.6, model="time_only", selection="last step", recipes_tried=4,
          wall_seconds=123.4, fold_seconds={"a": 1.0})
    _fake(res, "probe_cde_flow_seq.json", "probe_flow_seq", 0, 0.75, probe="flow_seq")
    _fake(res, "probe_cde_apex.json", "probe_apex", 0, 0.4, probe="apex")
    _fake(res, "cde_z_seed0.json", "z_seed0", 0, 0.7, model="atn", config_extra={"fusion": "late"})
    _fake(res, "probe_fused_cde_apex+flow_seq.json", "probe_fused_apex+flow_seq", 0, 0.7, deep=False,
          members=[("probe_apex", None), ("probe_flow_seq", None)])
    out = tmp_path / "results.md"
    out.write_text("# Results\n\nhand-written prose\n")
    results_doc.update(str(res), str(out), "2026-12-01", "test machine")
    doc = out.read_text()
    assert "hand-written prose" in doc and results_doc.BEGIN in doc and results_doc.PROBE_BEGIN in doc
    head = next(l for l in doc.splitlines() if l.startswith("| **x** |"))
    uf1s = [r["overall"]["uf1"] for r in runs]
    assert f"{statistics.mean(uf1s):.3f} ± {statistics.stdev(uf1s):.3f}" in head
    assert "over 3 seeds (0, 1, 2)" in head and "(results/cde_x_x3.json)" in head
    # atn without an apex_flow_seq probe: its two inputs' probes side by side
    assert "[apex](results/probe_cde_apex.json)" in head and "[flow_seq](results/probe_cde_flow_seq.json)" in head
    assert not any(l.startswith("| **y** |") for l in doc.splitlines())          # one seed: no headline
    row_y = next(l for l in doc.splitlines() if l.startswith("| [cde_y.json]"))
    assert "| last step | 4 | 123 |" in row_y and "[flow_seq](results/probe_cde_flow_seq.json)" in row_y
    row_x = next(l for l in doc.splitlines() if l.startswith("| [cde_x_seed0.json]"))
    assert "| — | — | — |" in row_x
    lo, hi = row_x.split(" | ")[6].strip("[]").split(", ")
    assert float(lo) <= runs[0]["overall"]["uf1"] <= float(hi)
    probe_row = next(l for l in doc.splitlines() if l.startswith("| [probe_cde_flow_seq.json]"))
    assert "| 0.01 (9) | 12 |" in probe_row
    # a late-fusion model is read against the fusion of its branches' probes too, which the
    # probe table lists
    row_z = next(l for l in doc.splitlines() if l.startswith("| [cde_z_seed0.json]"))
    assert "[apex+flow_seq](results/probe_fused_cde_apex+flow_seq.json)" in row_z
    assert "[apex+flow_seq](results/probe_fused_cde_apex+flow_seq.json)" not in row_x     # not late fusion
    fused_row = next(l for l in doc.splitlines() if l.startswith("| [probe_fused_cde_apex+flow_seq.json]"))
    assert "| apex+flow_seq | fused (2) | CDE |" in fused_row
    # regenerating replaces both blocks in place
    results_doc.update(str(res), str(out), "2026-12-02", "test machine")
    again = out.read_text()
    assert again.count(results_doc.BEGIN) == 1 and again.count(results_doc.PROBE_BEGIN) == 1
    assert "2026-12-02" in again and "2026-12-01;" not in again


def test_a_cartesian_time_branch_is_read_against_both_flow_seq_probes():
    from atn_tf import results_doc

    probes = {("cde", "flow_seq"): ("p1", {}), ("cde", "flow_seq_cartesian"): ("p2", {})}
    assert results_doc.probe_inputs("time_only", "cde", probes, {"flow_seq_repr": "polar"}) == ("flow_seq",)
    assert results_doc.probe_inputs("time_only", "cde", probes, {"flow_seq_repr": "cartesian"}) == \
        ("flow_seq", "flow_seq_cartesian")
    assert results_doc.probe_inputs("time_only", "hde", probes, {"flow_seq_repr": "cartesian"}) == ("flow_seq",)


def test_a_per_image_standardised_flow_branch_is_read_against_both_flow_image_probes():
    from atn_tf import results_doc

    probes = {("cde", "flow_image"): ("p1", {}), ("cde", "flow_image_std"): ("p2", {})}
    assert results_doc.probe_inputs("flow_only", "cde", probes, {}) == ("flow_image",)
    assert results_doc.probe_inputs("flow_only", "cde", probes, {"flow_sample_norm": True}) == \
        ("flow_image", "flow_image_std")
    assert results_doc.probe_inputs("flow_only", "hde", probes, {"flow_sample_norm": True}) == ("flow_image",)


def test_flow_image_results_from_before_the_mirror_fix_are_marked():
    """Same flags, different mirror: a flow-image model's report from before the fix says so
    in its size cell; other models, later reports and unaugmented runs do not."""
    from atn_tf import results_doc

    def marked(model, date, augment=True):
        r = {"config": {"model": model, "augment": augment, "image_size": 64, "width": 16, "lstm_units": 128,
                        "train_steps": 400}, "date": date, "experiment": "x_v9_seed0"}
        return "old flow-image mirror" in results_doc._size(r)

    before, after = "2026-12-04T10:00:00+00:00", "2026-12-05T02:00:00+00:00"
    assert marked("atn_flow", before) and marked("flow_only", before)
    assert not marked("atn_flow", after) and not marked("atn", before) and not marked("flow_only", before, False)


def test_size_cell_names_the_apex_network_probe_head_and_members():
    from atn_tf import results_doc

    def size(**cfg):
        r = {"config": {"model": "atn_flow", "image_size": 64, "width": 16, "lstm_units": 128, "train_steps": 400,
                        **cfg}, "date": "2026-12-05T08:00:00+00:00", "experiment": "x_v12_seed0"}
        return results_doc._size(r)

    assert size() == "recipe v12 (64px, width 16, LSTM 128, 400 steps)"
    assert "FER2013 mini-Xception apex (frozen)" in size(apex_backbone="fer_xception", freeze_apex=True)
    assert "ResNet apex distilled from FER2013" in size(apex_backbone="resnet", apex_distill=1.0)
    assert size(linear_path=True, linear_fit="probe", members=3).endswith("fitted probe head, 3 members)")
    assert "probe head" not in size(linear_path=True, linear_fit="train")
    assert size(database_head_weights="smic:apex=0").endswith("400 steps, head weights per database)")
    assert size(apex_fit="probe", linear_path=True, linear_fit="probe").endswith(
        "fitted probe head, apex head fitted as a probe)")
    assert "apex head" not in size(apex_fit="train")
