"""The issue's targets read off reports (`atn_tf.evaluation.targets`): headline seeds only,
margins per criterion, collapse, and the status the generated table states."""

import numpy as np

from atn_tf.evaluation import targets
from atn_tf.evaluation.targets import Target


def _report(uf1, seed, model="atn_flow", backbone="fer_xception", dbs=None, collapse=None):
    dbs = dbs or {"casme2": uf1, "samm": uf1, "smic": uf1}
    per_db = {}
    for db, v in dbs.items():
        conf = [[5, 0, 0], [5, 0, 0], [5, 0, 0]] if db == collapse else [[3, 1, 1], [1, 3, 1], [1, 1, 3]]
        per_db[db] = {"uf1": v, "confusion": conf}
    return {"config": {"model": model, "apex_backbone": backbone, "seed": seed}, "overall": {"uf1": uf1},
            "per_database": per_db}


def _ensemble(uf1, n=3):
    rng = np.random.default_rng(0)
    preds = []
    for i in range(60):
        y = i % 3
        preds.append({"sample_id": f"c{i}", "database": ("casme2", "samm", "smic")[i % 3], "subject": f"s{i // 4}",
                      "label": y, "pred": y if rng.random() < uf1 else (y + 1) % 3})
    return {"members": [{}] * n, "overall": {"uf1": uf1}, "predictions": preds}


def _group(key, uf1s, seeds=(0, 1, 2), ensemble=None, protocol="cde", **kw):
    runs = [(f"{key}_seed{s}.json", _report(u, s, **kw)) for u, s in zip(uf1s, seeds)]
    return {"key": key, "protocol": protocol, "runs": runs, "ensembles": [("e.json", ensemble)] if ensemble else []}


TARGET = Target("flow", "atn_flow", "cde", mean=0.76, ensemble=0.80)


def test_only_seeds_0_1_2_of_the_model_and_backbone_are_headline_runs():
    groups = [_group("a", [0.8] * 3), _group("a_more", [0.9] * 3, seeds=(3, 4, 5)),
              _group("b", [0.9] * 3, model="atn"), _group("c", [0.9] * 3, protocol="hde"),
              _group("d", [0.9] * 2, seeds=(0, 1))]
    assert [r.key for r in targets.headline_recipes(groups, TARGET)] == ["a"]
    resnet = Target("r", "atn_flow", "cde", backbone="resnet", mean=0.5)
    assert targets.headline_recipes([_group("e", [0.9] * 3, backbone=None)], resnet)[0].key == "e"
    assert not targets.headline_recipes(groups, resnet)


def test_margins_and_status_of_a_two_criterion_target():
    met = _group("good", [0.78, 0.77, 0.79], ensemble=_ensemble(0.81))
    mean_only = _group("close", [0.80, 0.80, 0.80], ensemble=_ensemble(0.79))
    no_ens = _group("no_ensemble", [0.9, 0.9, 0.9])
    recipes = targets.headline_recipes([met, mean_only, no_ens], TARGET)
    m = {r.key: targets.margins(r, TARGET, {}) for r in recipes}
    assert np.isclose(m["good"]["mean"], 0.02) and np.isclose(m["good"]["ensemble"], 0.01)
    assert np.isclose(m["close"]["ensemble"], -0.01) and m["no_ensemble"]["ensemble"] == -np.inf
    row = targets.status_row(TARGET, recipes, {})
    assert row[3] == "met by 1 of 3 recipes (good)"
    assert "**no_ensemble**: 0.900" in row[1] and "**good**" in row[1]     # best mean and best ensemble
    missed = targets.status_row(TARGET, targets.headline_recipes([mean_only], TARGET), {})
    assert missed[3].startswith("missed by all 1 recipes") and "ensemble -0.010" in missed[3]
    assert targets.status_row(TARGET, [], {})[3] == "not measured"


def test_per_database_probe_and_collapse_criteria():
    t = Target("atn", "atn", "cde", mean_probe="flow_seq", per_database={"casme2": 0.7, "samm": 0.5},
               no_collapse=True)
    probes = {("cde", "flow_seq"): ("p.json", {"overall": {"uf1": 0.6}})}
    ok = _group("ok", [0.65] * 3, model="atn", dbs={"casme2": 0.72, "samm": 0.55, "smic": 0.6})
    flat = _group("flat", [0.65] * 3, model="atn", dbs={"casme2": 0.72, "samm": 0.55, "smic": 0.6},
                  collapse="samm")
    low = _group("low", [0.65] * 3, model="atn", dbs={"casme2": 0.69, "samm": 0.55, "smic": 0.6})
    r = {x.key: x for x in targets.headline_recipes([ok, flat, low], t)}
    assert targets.meets(r["ok"], t, probes)
    assert targets.collapsed(r["flat"].runs[0]) == ["samm"] and not targets.meets(r["flat"], t, probes)
    assert np.isclose(targets.margins(r["low"], t, probes)["casme2"], -0.01)
    assert targets.margins(r["ok"], t, {})["mean"] == -np.inf              # no probe committed: not met
    assert "met by 1 of 3 recipes (ok)" in targets.status_table([ok, flat, low], probes, [t])
