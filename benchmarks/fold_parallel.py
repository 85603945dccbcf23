"""`python -m benchmarks.fold_parallel`: how far two fold processes move the CDE result.

With one process the fast runner's predictions equal the sequential runner's (pinned by
tests/test_evaluate.py). With `--fold_workers=2` each process runs one intra-op thread, so
floating-point sums are ordered differently; over hundreds of steps that moves
probabilities, and a borderline clip can change class. Bit-equality cannot hold there, so
this command measures the bound instead: the full 68-fold CDE of one experiment, for each
seed, once in one process and once in two, and compares the pooled UF1 change with the
spread across seeds.

Evaluations go to `--work_root/<experiment>_p{1,2}_seed<S>` and resume fold by fold, so an
interrupted run continues where it stopped. The section "Fold-parallel bound" of
benchmarks/results.md is replaced when all have finished.
"""

from __future__ import annotations

from atn_tf import quiet_start

if __name__ == "__main__":      # before anything imports TensorFlow: no C++ start-up lines
    quiet_start.install()

import os
import statistics

from absl import app, flags

from benchmarks import common


def define_flags() -> None:
    """Only when run: tests import this module beside other benchmarks with flags of the
    same names."""
    flags.DEFINE_string("config", "experiments/atn_flow_cde_cpu.cfg", "Experiment file.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each is evaluated with 1 and 2 processes.")
    flags.DEFINE_string("data_dir", "data/tfrecords/megc2019_crops", "Records (the real MEGC2019 442).")
    flags.DEFINE_string("work_root", "runs/fold_parallel", "Where the evaluations are kept (resumable).")
    flags.DEFINE_bool("write", True, "Write the section of benchmarks/results.md.")


FLAGS = flags.FLAGS

TITLE = "Fold-parallel bound"
WORKERS = (1, 2)


def compare(one: dict, two: dict) -> dict:
    """Per-seed comparison of two reports of the same evaluation (1 vs 2 processes)."""
    a = {p["sample_id"]: p for p in one["predictions"]}
    b = {p["sample_id"]: p for p in two["predictions"]}
    if set(a) != set(b):
        raise ValueError("the two reports cover different samples")
    max_dp = max(abs(x - y) for k in a for x, y in zip(a[k]["probabilities"], b[k]["probabilities"]))
    changed = sum(a[k]["pred"] != b[k]["pred"] for k in a)
    return {"uf1_1": one["overall"]["uf1"], "uf1_2": two["overall"]["uf1"],
            "delta_uf1": two["overall"]["uf1"] - one["overall"]["uf1"],
            "max_prob_diff": max_dp, "changed": changed, "n": len(a),
            # fold times summed over the processes that ran them at once (resume-proof, unlike wall time)
            "minutes_1": _fold_minutes(one, 1), "minutes_2": _fold_minutes(two, 2)}


def _fold_minutes(report: dict, workers: int) -> float:
    return sum(v or 0 for v in (report.get("fold_seconds") or {}).values()) / workers / 60


def summarize(per_seed: dict) -> dict:
    """The bound over seeds: the largest |ΔUF1| between 1 and 2 processes against the spread
    of the one-process UF1 across seeds (sd and range)."""
    ones = [r["uf1_1"] for r in per_seed.values()]
    twos = [r["uf1_2"] for r in per_seed.values()]
    sd = statistics.stdev(ones) if len(ones) > 1 else 0.0
    worst = max(abs(r["delta_uf1"]) for r in per_seed.values())
    return {"mean_1": statistics.mean(ones), "mean_2": statistics.mean(twos), "sd_1": sd,
            "sd_2": statistics.stdev(twos) if len(twos) > 1 else 0.0,
            "range_1": max(ones) - min(ones), "max_abs_delta": worst,
            "mean_delta": statistics.mean(twos) - statistics.mean(ones),
            "within_spread": worst <= max(ones) - min(ones)}


def markdown(name: str, per_seed: dict, summary: dict, load_before: str) -> str:
    rows = [[s, f"{r['uf1_1']:.3f}", f"{r['uf1_2']:.3f}", f"{r['delta_uf1']:+.3f}",
             f"{r['changed']} of {r['n']}", f"{r['max_prob_diff']:.3f}",
             f"{r['minutes_1']:.1f}", f"{r['minutes_2']:.1f}"] for s, r in per_seed.items()]
    table = common.markdown_table(["seed", "UF1, 1 process", "UF1, 2 processes", "Δ UF1", "clips whose class changed",
                                   "max |Δp|", "min, 1 process", "min, 2 processes (fold time / 2)"], rows)
    s = summary
    verdict = "within" if s["within_spread"] else "OUTSIDE"
    return (common.preamble(load_before) + "\n\n"
            f"{name}, full CDE (68 folds, pooled), {len(per_seed)} seeds, one process (two intra-op threads; its "
            "predictions equal the sequential runner's) vs `--fold_workers=2` (one thread each).\n\n"
            + table + "\n\n"
            f"- mean ± sd UF1: {s['mean_1']:.3f} ± {s['sd_1']:.3f} (1 process) vs {s['mean_2']:.3f} ± {s['sd_2']:.3f} "
            f"(2 processes); mean change {s['mean_delta']:+.3f}.\n"
            f"- largest |Δ UF1| on one seed: {s['max_abs_delta']:.3f}, {verdict} the seed range of one process "
            f"({s['range_1']:.3f}; sd {s['sd_1']:.3f}).\n")


def main(argv):
    del argv
    from atn_tf import flags_lib
    from atn_tf.evaluation import evaluate_lib

    load_before = common.load_str()
    name = os.path.splitext(os.path.basename(FLAGS.config))[0]
    reports = {}
    for seed in [int(s) for s in FLAGS.seeds]:
        config = flags_lib.config_from_flagfile(FLAGS.config, data_dir=FLAGS.data_dir, seed=seed)
        for workers in WORKERS:
            experiment = f"{name}_p{workers}_seed{seed}"
            reports[seed, workers] = evaluate_lib.evaluate(
                config, "cde", os.path.join(FLAGS.work_root, experiment), experiment=experiment,
                command=common.command(), fold_workers=workers)
            print(f"seed {seed}, {workers} process(es): UF1 {reports[seed, workers]['overall']['uf1']:.3f}", flush=True)
    per_seed = {s: compare(reports[s, 1], reports[s, 2]) for s in sorted({s for s, _ in reports})}
    md = markdown(name, per_seed, summarize(per_seed), load_before)
    print(md)
    if FLAGS.write:
        common.write_section(TITLE, md)


if __name__ == "__main__":
    define_flags()
    app.run(main)
