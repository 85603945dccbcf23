"""`python -m benchmarks.train_step`: training throughput of `atn` against the machine's
measured float32 peak.

For each (image size, batch, jit_compile) cell, one `tf.function` training step (forward,
loss, backward, SGD momentum 0.9 with weight decay — the recipe of `atn_tf.training.train_lib`) runs
over synthetic tensors already in memory, so the input pipeline is excluded; warm-up steps
(tracing / XLA compilation) are not timed. FLOPs per sample are counted analytically from
the layer shapes (convolutions, dense layers, LSTM gate matmuls; a training step is taken
as 3x the forward pass) and cross-checked against TensorFlow's profiler on the forward
graph of the apex branch. The peak is a 4096x4096 float32 matmul timed in the same run
(best of 2, before and after the grid). One more measurement feeds the same step from the
real `atn_tf` input pipeline (442 MEGC2019 records, T = 4) next to synthetic tensors of the
same shapes, to show whether the input pipeline limits training.
"""

from __future__ import annotations

from atn_tf import quiet_start

if __name__ == "__main__":      # before anything imports TensorFlow: no C++ start-up lines
    quiet_start.install()

import time

import numpy as np
from absl import app, flags

from benchmarks import common

FULL_GRID = ["224:16", "224:32", "224:64", "112:16", "112:32", "112:64"]
flags.DEFINE_list("cells", FULL_GRID,
                  "image_size:batch cells to time. The full grid takes ~4 min on 2 idle cores, ~15 min "
                  "on 2 busy ones.")
flags.DEFINE_list("jit", ["false", "true"], "jit_compile settings.")
flags.DEFINE_integer("steps", 5, "Timed steps per cell.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per cell (tracing, XLA compilation).")
flags.DEFINE_float("max_cell_seconds", 15.0,
                   "Fewer timed steps (at least 2) where the first warm-up step shows the cell would take longer.")
flags.DEFINE_integer("time_steps", 64, "T of the synthetic flow sequence (the paper's 64).")
flags.DEFINE_integer("width", 64, "Apex branch width.")
flags.DEFINE_integer("lstm_units", 512, "LSTM units.")
flags.DEFINE_string("data_dir", "data/tfrecords/megc2019_crops", "Records for the real-input measurement ('' skips it).")
flags.DEFINE_integer("real_image_size", 112, "Image size of the real-input measurement.")
flags.DEFINE_integer("real_batch", 16, "Batch of the real-input measurement.")
flags.DEFINE_integer("matmul_n", 4096, "Side of the peak matmul.")
flags.DEFINE_bool("write", True, "Write the section of benchmarks/results.md.")
FLAGS = flags.FLAGS

TITLE = "Training step"


# ------------------------------------------------------------------ FLOPs

def analytic_flops(model, time_steps: int) -> dict:
    """Forward FLOPs per sample (multiply-add = 2), by layer kind, from the layer shapes."""
    import keras

    out = {"conv": 0.0, "dense": 0.0, "lstm": 0.0}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            out["conv"] += 2.0 * kh * kw * cin * cout * h * w
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            out["dense"] += 2.0 * cin * cout
        elif isinstance(layer, keras.layers.LSTM):
            units = layer.units
            cin = layer.cell.kernel.shape[0]
            out["lstm"] += 2.0 * 4 * units * (cin + units) * time_steps
    out["total"] = out["conv"] + out["dense"] + out["lstm"]
    return out


def profiler_flops_apex(model, image_size: int) -> float:
    """TensorFlow's profiler count of the forward graph of the apex branch (batch 1)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tensorflow.python.profiler import model_analyzer
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder
    import keras

    branch = keras.Model(model.inputs["apex_image"] if isinstance(model.inputs, dict) else model.inputs[0],
                         model.get_layer("global_pool").output)
    fn = tf.function(lambda x: branch(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, image_size, image_size, 1], tf.float32))
    frozen = convert_variables_to_constants_v2(fn)
    opts = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output().build()
    prof = model_analyzer.profile(graph=frozen.graph, options=opts)
    return float(prof.total_float_ops)


def conv_flops_only(model) -> float:
    import keras

    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2.0 * kh * kw * cin * cout * h * w
    return total


# ------------------------------------------------------------------ timing

def matmul_peak(n: int, repeats: int = 2) -> float:
    import tensorflow as tf

    a = tf.random.normal([n, n], dtype=tf.float32)
    b = tf.random.normal([n, n], dtype=tf.float32)
    mm = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    mm(a, b).numpy()
    best = min(common.timed(lambda: mm(a, b).numpy())[0] for _ in range(repeats))
    return 2.0 * n ** 3 / best


def synthetic_batch(batch: int, image_size: int, steps: int, seed: int = 0):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x = {"apex_image": tf.constant(rng.uniform(0, 255, (batch, image_size, image_size, 1)), tf.float32),
         "flow_seq": tf.constant(rng.normal(size=(batch, steps, 128)), tf.float32),
         "flow_len": tf.constant(rng.integers(1, steps + 1, batch), tf.int32),
         "flow_image": tf.constant(rng.uniform(0, 255, (batch, 28, 28, 3)), tf.float32)}
    y = tf.constant(rng.integers(0, 3, batch), tf.int32)
    return x, y


def make_step(model, batch: int, jit: bool):
    import keras
    import tensorflow as tf

    opt = keras.optimizers.SGD(0.01, momentum=0.9, weight_decay=5e-6)
    opt.build(model.trainable_variables)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def step(inputs, labels):
        with tf.GradientTape() as tape:
            out = model(inputs, training=True)
            loss = tf.nn.compute_average_loss(ce(labels, tf.cast(out["logits"], tf.float32)),
                                              global_batch_size=batch)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return tf.function(step, jit_compile=jit)


def time_cell(step, x, y, warmup: int, steps: int, max_seconds: float) -> dict:
    t_first, _ = common.timed(lambda: float(step(x, y)))
    t_warm = []
    for _ in range(warmup - 1):
        t_warm.append(common.timed(lambda: float(step(x, y)))[0])
    per = t_warm[-1] if t_warm else t_first
    n = max(2, min(steps, int(max_seconds / max(per, 1e-6)))) if max_seconds else steps
    times = [common.timed(lambda: float(step(x, y)))[0] for _ in range(n)]
    return {"first_s": t_first, "median_s": float(np.median(times)), "timed": n}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    busy0 = common.cpu_busy()
    load0, idle = common.load_str(busy0), busy0 < 0.15
    import keras
    import tensorflow as tf

    from atn_tf.models import build_model

    t_start = time.time()
    peak0 = matmul_peak(FLAGS.matmul_n)
    print(f"peak (matmul {FLAGS.matmul_n}): {peak0 / 1e9:.1f} GFLOP/s", flush=True)

    rows, flops = [], {}
    cells: dict[int, list[int]] = {}
    for cell in FLAGS.cells:
        size, batch = (int(v) for v in cell.split(":"))
        cells.setdefault(size, []).append(batch)
    for size, batches in cells.items():
        keras.utils.set_random_seed(0)
        model = build_model("atn", image_size=size, width=FLAGS.width, lstm_units=FLAGS.lstm_units)
        f = analytic_flops(model, FLAGS.time_steps)
        prof = profiler_flops_apex(model, size)
        flops[size] = (f, prof, conv_flops_only(model))
        print(f"{size}: forward {f['total'] / 1e9:.3f} GFLOP/sample (conv {f['conv'] / 1e9:.3f}, "
              f"lstm {f['lstm'] / 1e9:.3f}); profiler apex branch {prof / 1e9:.3f}", flush=True)
        for batch in batches:
            x, y = synthetic_batch(batch, size, FLAGS.time_steps)
            for jit in (s.lower() in ("1", "true", "yes") for s in FLAGS.jit):
                step = make_step(model, batch, jit)
                r = time_cell(step, x, y, FLAGS.warmup, FLAGS.steps, FLAGS.max_cell_seconds)
                sps = batch / r["median_s"]
                achieved = sps * 3 * f["total"]
                rows.append((size, batch, jit, r, sps, achieved))
                print(f"  {size} b{batch:3d} jit={jit!s:5s} {r['median_s'] * 1e3:8.1f} ms/step "
                      f"{sps:7.1f} samples/s {achieved / 1e9:6.1f} GFLOP/s  (first {r['first_s']:.1f}s, "
                      f"{r['timed']} timed)", flush=True)

    real = None
    if FLAGS.data_dir:
        real = real_input_check(FLAGS.data_dir, FLAGS.real_image_size, FLAGS.real_batch)
    peak1 = matmul_peak(FLAGS.matmul_n)
    peak = max(peak0, peak1)
    print(f"peak again: {peak1 / 1e9:.1f} GFLOP/s; total {time.time() - t_start:.0f} s", flush=True)
    best = max(rows, key=lambda r: r[5])

    table = [[s, b, "yes" if j else "no", f"{r['median_s'] * 1e3:.0f}", f"{sps:.1f}",
              f"{ach / 1e9:.1f}", f"{ach / peak:.0%}", f"{r['first_s']:.1f}", r["timed"]]
             for s, b, j, r, sps, ach in rows]
    flop_lines = [
        f"- {s}×{s}: forward {f['total'] / 1e9:.3f} GFLOP/sample = conv {f['conv'] / 1e9:.3f} + LSTM "
        f"{f['lstm'] / 1e9:.3f} (T = {FLAGS.time_steps}) + dense {f['dense'] / 1e6:.2f} M; training step "
        f"3× = {3 * f['total'] / 1e9:.2f} GFLOP/sample. Profiler (`model_analyzer.profile`, "
        f"`float_operation()`) on the frozen forward graph of the apex branch: {prof / 1e9:.3f} GFLOP "
        f"(analytic convolutions {conv / 1e9:.3f}; the rest is BN, ReLU, pooling and adds)."
        for s, (f, prof, conv) in flops.items()]
    md = [
        common.preamble(load0),
        "",
        f"`atn` (width {FLAGS.width}, LSTM {FLAGS.lstm_units}), float32, one `tf.function` step (forward, "
        "loss, backward, SGD momentum + weight decay) over synthetic tensors in memory (input excluded); "
        f"median of the timed steps after {FLAGS.warmup} warm-up steps (fewer timed steps where a cell would "
        f"exceed {FLAGS.max_cell_seconds:.0f} s — the `timed` column). Flow sequences T = {FLAGS.time_steps} "
        f"(the paper's input). Cells timed: {', '.join(FLAGS.cells)}"
        + (" (the full grid)." if sorted(FLAGS.cells) == sorted(FULL_GRID) else
           f" (part of the grid; the default `--cells={','.join(FULL_GRID)}` runs all of it)."),
        "",
        f"Peak: {FLAGS.matmul_n}×{FLAGS.matmul_n} float32 matmul, best of 2 after a warm-up call — {peak0 / 1e9:.1f} GFLOP/s before "
        f"the grid, {peak1 / 1e9:.1f} after; the larger, **{peak / 1e9:.1f} GFLOP/s**, is the peak below.",
        "",
        "FLOPs per sample, counted analytically from the layer shapes (multiply-add = 2; the profiler counts "
        "an LSTM's `while` body once, not T times, so it is used only as a check of the apex branch):",
        *flop_lines,
        "",
        common.markdown_table(["image", "batch", "jit_compile", "ms/step", "samples/s", "GFLOP/s",
                               "of peak", "first step s", "timed"], table),
        "",
        f"Best cell: {best[0]}×{best[0]}, batch {best[1]}, jit {'on' if best[2] else 'off'} — "
        f"**{best[5] / peak:.0%} of the measured peak** ({best[5] / 1e9:.1f} of {peak / 1e9:.1f} GFLOP/s; "
        "goal ≥ 35% on CPU). "
        + ("The machine was otherwise idle (CPU busy fraction at the start, above)." if idle else
           "Background jobs shared the cores with every number here — the step times and the matmul peak "
           "alike — so the fraction holds only as far as that load was steady (the two peak measurements "
           "show how much it moved)."),
    ]
    if real:
        md += ["", real["markdown"]]
    pairs = {(r[0], r[1], r[2]): r[4] for r in rows}
    gains = [pairs[(sz, b, True)] / pairs[(sz, b, False)] for sz, b, j in pairs if j and (sz, b, False) in pairs]
    md += ["", gpu_note(3 * flops[224][0]["total"] / 1e9 if 224 in flops else 0.0,
                        float(np.exp(np.mean(np.log(gains)))) if gains else float("nan"))]
    if FLAGS.write:
        common.write_section(TITLE, "\n".join(md))
        print(f"wrote the '## {TITLE}' section of {common.RESULTS}")
    return 0


def gpu_note(train_gflop: float, jit_gain: float = float("nan")) -> str:
    """What the measured numbers mean for GPUs (not measured here)."""
    per_sample = f"{train_gflop:.1f} GFLOP" if train_gflop else "the training FLOPs above"
    a100 = 312e12 * 0.35 / (train_gflop * 1e9) if train_gflop else float("nan")
    return f"""\
**Extrapolating to GPUs (not measured: this machine has none).** What the code supports:
`--mixed_precision` (Keras `mixed_float16` policy, `LossScaleOptimizer`, logits cast to float32),
`--jit_compile` (XLA on the replica step; on this CPU, jit on / jit off samples/s averaged
{jit_gain:.2f}× over the cells above (geometric mean) — the case for XLA is on GPUs, where it can fuse the BatchNorm,
ReLU and LSTM-gate element-wise work between the matmuls), and `tf.distribute` (`--strategy=auto`:
`MirroredStrategy` over the visible GPUs, `MultiWorkerMirroredStrategy` when `TF_CONFIG` names
several workers; `--sync_batchnorm`, on by default, gives BatchNorm the global batch's statistics)
with `distribute_datasets_from_function`, so every worker has its own input pipeline shard.
The arithmetic: a training step at 224×224 costs {per_sample} per sample, so one A100 at a
realistic 35% of its 312 TFLOP/s dense fp16 peak would do ~{round(a100, -3):,.0f} samples/s — a pass over the
442 clips every few tens of milliseconds. A GPU run is therefore bounded by latency, not FLOPs: at
batch 16 a step is well under a millisecond of arithmetic, and kernel launches, the two LSTMs'
64 sequential steps (fused only by cuDNN, which needs the default LSTM activations and no
recurrent dropout) and the host loop dominate; the input pipeline here delivers ~2×10⁴
augmented examples/s from 2 CPU cores (see Input pipeline), so it can feed one such GPU from a
couple of cores, and eight from a host with a core or two per GPU. Eight GPUs at the recipe's global batch 16 give 2 samples per replica: the
all-reduce of 8.3 M parameters (33 MB in fp32) per step and synchronised BatchNorm dominate —
scale the global batch (and the learning rate) before adding GPUs. What a GPU run must measure:
samples/s and step time at batch 16/64/256 with and without `--mixed_precision` and
`--jit_compile`; achieved FLOP/s from the count above against the device's measured fp16 and
fp32 matmul peak; the share of step time spent waiting for input (the profiler's input-pipeline
analysis); and 1→8 GPU scaling efficiency at a fixed per-replica batch."""


def real_input_check(data_dir: str, image_size: int, batch: int) -> dict:
    """Is the input pipeline the bottleneck? The same step fed by the real pipeline (inside the
    tf.function, as train_lib does) next to synthetic tensors of the same shapes, and the
    input pipeline alone."""
    import keras
    import tensorflow as tf

    from atn_tf.data import input_pipeline
    from atn_tf.models import build_model

    ds = input_pipeline.train_dataset(data_dir, input_pipeline.Selection(), batch, image_size,
                                      augment_data=True, balance=True, seed=0)
    it = iter(ds)
    x0, y0 = next(it)
    t_real = int(x0["flow_seq"].shape[1])
    keras.utils.set_random_seed(0)
    model = build_model("atn", image_size=image_size, width=FLAGS.width, lstm_units=FLAGS.lstm_units)
    step = make_step(model, batch, False)

    @tf.function
    def step_from(iterator):
        x, y = next(iterator)
        return step(x, y)

    xs, ys = synthetic_batch(batch, image_size, t_real)
    n = max(FLAGS.steps, 8)
    for _ in range(FLAGS.warmup):
        float(step_from(it))
        float(step(xs, ys))
    res = {"synthetic": [], "real": [], "input": []}
    for _ in range(2):          # alternate, so both see the same machine load
        res["synthetic"].append(common.timed(lambda: [float(step(xs, ys)) for _ in range(n)])[0] / n)
        res["real"].append(common.timed(lambda: [float(step_from(it)) for _ in range(n)])[0] / n)
        res["input"].append(common.timed(lambda: [next(it)[1].numpy() for _ in range(4 * n)])[0] / (4 * n))
    sps = {k: batch / float(np.mean(v)) for k, v in res.items()}
    slowdown = sps["synthetic"] / sps["real"] - 1
    verdict = ("the input pipeline is not the bottleneck" if sps["input"] > 3 * sps["real"] and slowdown < 0.15
               else "the input pipeline limits training here")
    md = (f"Input pipeline vs training (`atn` {image_size}×{image_size}, batch {batch}, jit off; real "
          f"MEGC2019 records, T = {t_real}; {n} steps × 2 alternating rounds): step fed by "
          f"`train_dataset` inside the `tf.function` {sps['real']:.1f} samples/s, on synthetic tensors of "
          f"the same shapes {sps['synthetic']:.1f} samples/s (real-fed / synthetic = {sps['real'] / sps['synthetic']:.2f}); the input pipeline alone "
          f"delivers {sps['input']:.0f} samples/s ({sps['input'] / sps['real']:.0f}× what the step consumes) "
          f"— {verdict}.")
    print(md, flush=True)
    return {"markdown": md, **sps}


if __name__ == "__main__":
    app.run(main)
