"""`python -m benchmarks.serving [--model_dir runs/x]`: latency and throughput of the exported
SavedModel's `serving_default` signature, in-process on this machine's CPU.

Without `--model_dir` an untrained full-size model is built (`--model`, 224x224, width 64,
LSTM 512: the paper's network; weights do not change the cost) and exported to a temporary
folder. Each (batch, T) cell is timed after warm-up calls; the table (median, p99,
examples/s) replaces the `## Serving` section of `benchmarks/results.md`.
"""

from __future__ import annotations

from atn_tf import quiet_start

if __name__ == "__main__":      # before anything imports TensorFlow: no C++ start-up lines
    quiet_start.install()

import os
import tempfile
import time

import numpy as np
from absl import app, flags, logging

from benchmarks import common

flags.DEFINE_string("model_dir", None, "Finished run to export (default: untrained full-size --model).")
flags.DEFINE_string("model", "atn", "Model built when --model_dir is not given.")
flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Batch sizes.")
flags.DEFINE_list("steps", ["4", "64"], "Time steps T of flow_seq.")
flags.DEFINE_integer("repeats", 50, "Timed calls at batch 1 (larger batches: a fifth, at least 10).")
flags.DEFINE_integer("warmup", 5, "Untimed calls before each cell.")
flags.DEFINE_integer("threads", 0, "TF intra/inter-op threads (0: TensorFlow's default).")
flags.DEFINE_string("note", "", "A sentence added to the section (e.g. what else ran on the machine).")
flags.DEFINE_string("results", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.md"),
                    "Markdown file whose '## Serving' section is replaced.")
FLAGS = flags.FLAGS

SECTION = "## Serving"


def make_inputs(batch: int, steps: int, image_size: int, with_flow_image: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = {"apex_image": rng.uniform(0, 255, (batch, image_size, image_size, 1)).astype(np.float32),
         "flow_seq": rng.normal(size=(batch, steps, 128)).astype(np.float32),
         "flow_len": np.full([batch], steps, np.int32)}
    if with_flow_image:
        x["flow_image"] = rng.uniform(0, 255, (batch, 28, 28, 3)).astype(np.float32)
    return x


def time_signature(fn, inputs: dict, repeats: int, warmup: int) -> dict:
    import tensorflow as tf

    feeds = {k: tf.constant(v) for k, v in inputs.items()}
    for _ in range(warmup):
        fn(**feeds)["probabilities"].numpy()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(**feeds)["probabilities"].numpy()
        times.append(time.perf_counter() - t0)
    t = np.asarray(times) * 1e3
    batch = len(inputs["flow_len"])
    return {"median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)),
            "examples_per_s": batch / (float(np.median(t)) / 1e3), "repeats": repeats}


def replace_section(path: str, body: str) -> None:
    common.write_section(SECTION[len("## "):], body, path)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)      # TF's SavedModel INFO lines are noise here
    load0 = common.load_str()
    import tensorflow as tf

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    from atn_tf.serving import export_lib
    from atn_tf.config import TrainConfig
    from atn_tf.models import build_model

    if FLAGS.model_dir:
        from atn_tf.training.train_lib import load_trained
        model, config = load_trained(FLAGS.model_dir)
        what = f"trained run `{FLAGS.model_dir}`"
    else:
        config = TrainConfig(model=FLAGS.model)
        model = build_model(config.model, **config.model_kwargs())
        what = "untrained full-size model"
    params = model.count_params()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = export_lib.export_model(model, config, tmp)
        fn = tf.saved_model.load(path).signatures["serving_default"]
        with_fi = export_lib.uses_flow_image(config.model)
        for steps in map(int, FLAGS.steps):
            for batch in map(int, FLAGS.batch_sizes):
                repeats = FLAGS.repeats if batch == 1 else max(10, FLAGS.repeats // 5)
                r = time_signature(fn, make_inputs(batch, steps, config.image_size, with_fi),
                                   repeats, FLAGS.warmup)
                rows.append((batch, steps, r))
                print(f"batch {batch:3d}  T {steps:2d}  median {r['median_ms']:8.1f} ms  "
                      f"p99 {r['p99_ms']:8.1f} ms  {r['examples_per_s']:8.1f} examples/s", flush=True)
    lines = [
        common.preamble(load0),
        "",
        f"`serving_default` of the exported SavedModel, in-process "
        f"(`tf.saved_model.load`), CPU; {what}: `{config.model}`, {config.image_size}x{config.image_size}, "
        f"width {config.width}, LSTM {config.lstm_units}, {params / 1e6:.1f} M parameters. "
        f"Batch 1: {FLAGS.repeats} timed calls after {FLAGS.warmup} warm-up calls; larger batches "
        f"{max(10, FLAGS.repeats // 5)}.",
    ]
    if FLAGS.note:
        lines.append(FLAGS.note)
    lines += [
        "",
        "| batch | T | median ms | p99 ms | examples/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {b} | {t} | {r['median_ms']:.1f} | {r['p99_ms']:.1f} | {r['examples_per_s']:.1f} |"
              for b, t, r in rows]
    replace_section(FLAGS.results, "\n".join(lines))
    print(f"wrote the {SECTION!r} section of {FLAGS.results}")
    return 0


if __name__ == "__main__":
    app.run(main)
