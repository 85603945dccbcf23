"""`python -m benchmarks.cde_turnaround`: how long one 68-fold CDE takes, sequential vs fast.

For each experiment file, on the same `--num_folds` CDE folds spread over the three
databases (`evaluate_lib.development_folds`), in one process:

* sequential: `evaluate_lib.run_fold` per fold — `train_lib.train` as `atn_tf.train` runs
  it: decode, build, trace, train, checkpoint, predict;
* fast, 1 process: one `FoldRunner` (records decoded once, one session reset per fold);
* fast, 2 processes: `evaluate(..., fold_workers=2)`, each process on one intra-op thread.

The headline config (`HEADLINE`) is the best recipe of the paper's atn (docs/results.md).
Per-fold seconds are split into set-up (everything but the training loop: data selection,
model build, tracing, checkpoints, prediction) and training steps. Full-CDE minutes are
extrapolated to all folds from the per-fold time (the fast runner's one-time start-up is
added once). The fast runner's predictions are compared with the sequential ones.
"""

from __future__ import annotations

from atn_tf import quiet_start

if __name__ == "__main__":      # before anything imports TensorFlow: no C++ start-up lines
    quiet_start.install()

import json
import os
import tempfile
import time

from absl import app, flags

from benchmarks import common

HEADLINE = "experiments/atn_cde_v3.cfg"    # the paper's atn, best recipe (docs/results.md)
flags.DEFINE_list("configs", ["experiments/atn_cde_cpu.cfg", "experiments/time_only_cde_cpu.cfg",
                              "experiments/atn_flow_cde_cpu.cfg", HEADLINE],
                  "Experiment files to time.")
flags.DEFINE_string("data_dir", "data/tfrecords/megc2019_crops", "Records (the real MEGC2019 442).")
flags.DEFINE_integer("num_folds", 8, "CDE folds timed per runner (spread over the databases).")
flags.DEFINE_bool("write", True, "Write the section of benchmarks/results.md.")
FLAGS = flags.FLAGS

TITLE = "CDE turnaround"


def _fold_file(work, fold):
    from atn_tf.evaluation import evaluate_lib
    return os.path.join(work, "folds", evaluate_lib.fold_dirname(fold.name), evaluate_lib.PREDICTIONS)


def time_config(path: str, data_dir: str, num_folds: int) -> dict:
    import keras
    from atn_tf import flags_lib
    from atn_tf.evaluation import evaluate_lib, protocols

    config = flags_lib.config_from_flagfile(path, data_dir=data_dir)
    index = evaluate_lib.dataset_index(data_dir)
    folds_all = protocols.make_folds([r["sample_id"] for r in index], [r["database"] for r in index],
                                     [r["subject"] for r in index], "cde")
    folds = evaluate_lib.development_folds(folds_all, num_folds)
    out = {"config": path, "model": config.model, "steps": config.train_steps, "folds": [f.name for f in folds],
           "total_folds": len(folds_all)}
    with tempfile.TemporaryDirectory() as tmp:
        # sequential
        seq, seq_setup, seq_steps = os.path.join(tmp, "seq"), [], []
        for fold in folds:
            t0 = time.perf_counter()
            evaluate_lib.run_fold(config, fold, index, "cde", seq)
            total = time.perf_counter() - t0
            fit = json.load(open(_fold_file(seq, fold)))["fit_seconds"]
            seq_setup.append(total - fit)
            seq_steps.append(fit)
        # fast, one process
        keras.backend.clear_session()
        fast = os.path.join(tmp, "fast")
        t0 = time.perf_counter()
        runner = evaluate_lib.FoldRunner(config, "cde")
        start = time.perf_counter() - t0
        fast_setup, fast_steps = [], []
        for fold in folds:
            t0 = time.perf_counter()
            _, timing = runner.run(fold, fast)
            total = time.perf_counter() - t0
            fast_setup.append(total - timing["fit_seconds"])
            fast_steps.append(timing["fit_seconds"])
        del runner
        keras.backend.clear_session()
        # fast, two processes
        par = os.path.join(tmp, "par")
        t0 = time.perf_counter()
        report = evaluate_lib.evaluate(config, "cde", par, folds=[f.name for f in folds], fold_workers=2)
        par_wall = time.perf_counter() - t0
        par_folds = list(report["fold_seconds"].values())
        # same predictions?
        diff, same_pred, diff_par, same_par = 0.0, True, 0.0, True
        for fold in folds:
            a = {p["sample_id"]: p for p in json.load(open(_fold_file(seq, fold)))["predictions"]}
            for other, is_par in ((fast, False), (par, True)):
                for p in json.load(open(_fold_file(other, fold)))["predictions"]:
                    d = max(abs(x - y) for x, y in zip(p["probabilities"], a[p["sample_id"]]["probabilities"]))
                    if is_par:
                        diff_par, same_par = max(diff_par, d), same_par and p["pred"] == a[p["sample_id"]]["pred"]
                    else:
                        diff, same_pred = max(diff, d), same_pred and p["pred"] == a[p["sample_id"]]["pred"]
    n, total_folds = len(folds), out["total_folds"]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    seq_fold = mean(seq_setup) + mean(seq_steps)
    # The fast runner's first fold also traces the step: extrapolate it once, the others 67 times.
    fast_rest = [a + b for a, b in zip(fast_setup[1:], fast_steps[1:])] or [fast_setup[0] + fast_steps[0]]
    fast_full = start + fast_setup[0] + fast_steps[0] + (total_folds - 1) * mean(fast_rest)
    out.update(
        seq_setup=mean(seq_setup), seq_steps=mean(seq_steps), seq_full_min=seq_fold * total_folds / 60,
        fast_start=start, fast_setup=mean(fast_setup[1:] or fast_setup), fast_steps=mean(fast_steps[1:] or fast_steps),
        fast_full_min=fast_full / 60,
        # Two processes: each fold's own time, two at a time, plus the pool's start-up once.
        par_fold=mean(par_folds) / 2, par_start=max(0.0, par_wall - sum(par_folds) / 2),
        par_full_min=(max(0.0, par_wall - sum(par_folds) / 2) + total_folds * mean(par_folds) / 2) / 60,
        max_prob_diff_fast=diff, same_preds_fast=same_pred, max_prob_diff_par=diff_par, same_preds_par=same_par)
    out["best"] = "2 processes" if out["par_full_min"] < out["fast_full_min"] else "1 process"
    out["best_full_min"] = min(out["par_full_min"], out["fast_full_min"])
    out["ratio"] = out["seq_full_min"] / out["best_full_min"]
    # Amdahl on 2 cores: the training steps are the same computation in every runner, so
    # even with free set-up and both cores at full speed the ratio cannot pass this.
    out["ratio_limit"] = seq_fold / (out["seq_steps"] / 2)
    return out


def markdown(results: list[dict], load_before: str) -> str:
    rows = [[os.path.basename(r["config"]), r["model"], r["steps"],
             f"{r['seq_setup']:.1f} + {r['seq_steps']:.1f}", f"{r['fast_setup']:.1f} + {r['fast_steps']:.1f}",
             f"{r['fast_start']:.1f}", f"{r['par_fold']:.1f} (+ {r['par_start']:.0f} once)",
             f"{r['seq_full_min']:.1f}", f"{r['fast_full_min']:.1f}", f"{r['par_full_min']:.1f}",
             f"**{r['ratio']:.1f}×**", f"{r['ratio_limit']:.1f}×",
             f"{'equal' if r['same_preds_fast'] else 'DIFFER'} (max |Δp| {r['max_prob_diff_fast']:.1g}); "
             f"2 proc: {'equal' if r['same_preds_par'] else 'differ'} (max |Δp| {r['max_prob_diff_par']:.2g})"]
            for r in results]
    table = common.markdown_table(
        ["config", "model", "steps", "sequential s/fold (set-up + steps)", "fast s/fold (set-up + steps)",
         "fast start-up s (once)", "2 processes s/fold (+ start-up)", "sequential full CDE min",
         "fast full CDE min (1 process)", "fast full CDE min (2 processes)", "ratio",
         "ratio limit on 2 cores", "predictions vs sequential"],
        rows, align="lllrrrrrrrrrl")
    lines = [f"{r['model']} ({os.path.basename(r['config'])}): full CDE: {r['best_full_min']:.1f} min (fast, "
             f"{r['best']}) vs {r['seq_full_min']:.1f} min (sequential), {r['ratio']:.1f}×" for r in results]
    folds = ", ".join(results[0]["folds"]) if results else ""
    return (common.preamble(load_before) + "\n\n"
            + f"Timed on {len(results[0]['folds']) if results else 0} of the {results[0]['total_folds'] if results else 0} "
              f"CDE folds ({folds}); full-CDE minutes are extrapolated from the per-fold times.\n\n"
            + "\n".join(f"- {line}" for line in lines) + "\n\n" + table + "\n\n"
            "Set-up is everything but the training loop (whose first step also traces it). Sequential: decode the fold's records, build the model, "
            "trace the step, write checkpoints and the final model, predict. Fast: reset the weights, optimizer, "
            "RNG and step counter of a session built once, set the input statistics, predict. With one process the fast runner's predictions equal the sequential ones "
            "(stored probabilities, rounded to 6 decimals, within 1e-6; tests/test_evaluate.py pins equality on "
            "small models). Two processes run one intra-op thread each, so floating-point sums are ordered "
            "differently and 300-400 steps amplify it: probabilities can differ by a few hundredths and a "
            "borderline clip can change class; section \"Fold-parallel bound\" (`python -m benchmarks.fold_parallel`) "
            "measures what that does to the pooled UF1 over 3 seeds. "
            "Ratio limit on 2 cores: sequential s/fold ÷ (its training-step s/fold ÷ 2), the ratio a runner would "
            "reach with no set-up at all and both cores fully used; the training steps are the same computation "
            "in every runner (equal predictions), so no runner of this machine can pass it.\n")


def main(argv):
    del argv
    load_before = common.load_str()
    results = []
    for path in FLAGS.configs:
        r = time_config(path, FLAGS.data_dir, FLAGS.num_folds)
        results.append(r)
        print(f"{r['model']} ({path}): full CDE {r['best_full_min']:.1f} min fast vs {r['seq_full_min']:.1f} "
              f"sequential, {r['ratio']:.1f}x", flush=True)
    md = markdown(results, load_before)
    print(md)
    if FLAGS.write:
        common.write_section(TITLE, md)


if __name__ == "__main__":
    app.run(main)
