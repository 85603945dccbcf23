"""The benchmarks' shared helpers (the timings themselves are not unit-tested)."""

import math

import numpy as np
import pytest

from benchmarks import common


def test_cpu_busy_is_a_fraction_and_in_the_load_line():
    busy = common.cpu_busy(0.2)
    assert math.isnan(busy) or 0.0 <= busy <= 1.0
    assert "busy over 1 s" in common.load_str(0.25) and "25%" in common.load_str(0.25)


def test_write_section_replaces_only_its_own_section(tmp_path):
    path = str(tmp_path / "results.md")
    common.write_section("A", "first a", path)
    common.write_section("B", "only b", path)
    common.write_section("A", "second a", path)
    text = open(path).read()
    assert text.startswith(common.HEADER)
    assert "second a" in text and "first a" not in text and "only b" in text
    assert text.index("## A") < text.index("## B")
    assert [p.name for p in tmp_path.iterdir()] == ["results.md"]        # no temporary left


def test_cde_turnaround_times_both_runners_and_compares_predictions(tmp_path):
    from benchmarks import cde_turnaround
    from tests.fakes import build_megc_records

    data_dir = build_megc_records(tmp_path / "rec")
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text("--model=time_only\n--image_size=32\n--width=4\n--lstm_units=8\n--batch_size=6\n"
                   "--train_steps=3\n--checkpoint_every=3\n--log_every=3\n")
    r = cde_turnaround.time_config(str(cfg), data_dir, num_folds=2)
    assert r["total_folds"] == 6 and len(r["folds"]) == 2 and r["steps"] == 3
    assert r["same_preds_fast"] and r["max_prob_diff_fast"] == 0.0
    assert r["seq_full_min"] > 0 and r["fast_full_min"] > 0 and r["ratio"] > 0
    md = cde_turnaround.markdown([r], "0.0/0.0/0.0")
    assert f"time_only (tiny.cfg): full CDE: {r['best_full_min']:.1f} min (fast" in md


def _report(preds, uf1, fold_seconds):
    return {"overall": {"uf1": uf1}, "fold_seconds": fold_seconds,
            "predictions": [{"sample_id": f"s{i}", "pred": int(np.argmax(p)), "probabilities": p}
                            for i, p in enumerate(preds)]}


def test_fold_parallel_bound_compares_one_and_two_processes_per_seed():
    from benchmarks import fold_parallel

    one = _report([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]], 0.70, {"a": 60.0, "b": 60.0})
    two = _report([[0.58, 0.32, 0.1], [0.2, 0.3, 0.5]], 0.68, {"a": 60.0, "b": 60.0})
    r = fold_parallel.compare(one, two)
    assert r["changed"] == 1 and r["n"] == 2 and r["max_prob_diff"] == pytest.approx(0.2)
    assert r["delta_uf1"] == pytest.approx(-0.02)
    assert r["minutes_1"] == pytest.approx(2.0) and r["minutes_2"] == pytest.approx(1.0)   # 2 at once
    per_seed = {0: r, 1: {**r, "uf1_1": 0.66, "uf1_2": 0.67, "delta_uf1": 0.01},
                2: {**r, "uf1_1": 0.64, "uf1_2": 0.645, "delta_uf1": 0.005}}
    s = fold_parallel.summarize(per_seed)
    assert s["range_1"] == pytest.approx(0.06) and s["max_abs_delta"] == pytest.approx(0.02) and s["within_spread"]
    md = fold_parallel.markdown("x", per_seed, s, "0.0/0.0/0.0")
    assert "within the seed range" in md and "| 0 | 0.700 | 0.680 | -0.020 | 1 of 2 |" in md
    wide = {k: {**v, "delta_uf1": 0.1} for k, v in per_seed.items()}
    assert not fold_parallel.summarize(wide)["within_spread"]
    with pytest.raises(ValueError, match="different samples"):
        fold_parallel.compare(one, _report([[1, 0, 0]], 0.5, {}))
