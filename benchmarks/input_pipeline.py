"""`python -m benchmarks.input_pipeline`: examples/s of the `atn_tf` tf.data training input
against a re-creation of the seed's per-sample Caffe Python data layer, on the same real
samples.

Both sides read the 442 MEGC2019 samples: the tf.data pipeline from the TFRecords
(`atn_tf.data.input_pipeline.train_dataset`: parse, PNG decode, cache, class-balanced
sampling, augmentation, batch 16); the seed loader (`benchmarks/seed_loader.py`) from the
release's apex JPEGs (`cv2.imread` per sample) plus a temporary `OpticalFlowFeatureData.txt`
written in the seed's format from the records' flow sequences. The two are timed
alternately in one process (the same load on the machine for both), after warm-up, over
`--passes` passes of the data each; the setup cost (tf.data: building the dataset, which
parses and decodes every record once to count labels and fill the cache; seed: reading the
list and parsing the flow text) is reported separately.
"""

from __future__ import annotations

from atn_tf import quiet_start

if __name__ == "__main__":      # before anything imports TensorFlow: no C++ start-up lines
    quiet_start.install()

import math
import tempfile

from absl import app, flags

from benchmarks import common

flags.DEFINE_string("data_dir", "data/tfrecords/megc2019_crops", "TFRecords of the 442 real samples.")
flags.DEFINE_string("image_root", "../shared/reference/megc2019/apex_faces",
                    "The release's apex JPEGs (<sample_id>.jpg), read by the seed loader.")
flags.DEFINE_integer("batch_size", 16, "Batch size (the seed's).")
flags.DEFINE_integer("image_size", 224, "Apex image side.")
flags.DEFINE_integer("passes", 6, "Passes over the samples timed per loader (split into rounds).")
flags.DEFINE_integer("rounds", 3, "Alternations seed / tf.data; each round times passes/rounds of the data.")
flags.DEFINE_integer("warmup", 8, "Untimed batches per loader before timing (tf.data autotuning ramps up).")
flags.DEFINE_bool("write", True, "Write the section of benchmarks/results.md.")
FLAGS = flags.FLAGS

TITLE = "Input pipeline"


def load_records(data_dir: str) -> list[dict]:
    from atn_tf.data import input_pipeline

    out = []
    for r in input_pipeline.records(data_dir).as_numpy_iterator():
        out.append({"sample_id": r["sample_id"].decode(), "label": int(r["label"]), "flow_seq": r["flow_seq"]})
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    load0 = common.load_str()
    import tensorflow as tf
    import cv2
    import numpy as np

    from atn_tf.data import input_pipeline
    from benchmarks.seed_loader import SeedLoader, write_seed_files

    from atn_tf.data import augment

    headroom = common.parallel_headroom()
    print(f"parallel headroom: 2 processes run {headroom:.2f}x one", flush=True)
    recs = load_records(FLAGS.data_dir)
    n = len(recs)
    apex = cv2.resize(cv2.imread(f"{FLAGS.image_root}/{recs[0]['sample_id']}.jpg", cv2.IMREAD_GRAYSCALE),
                      (FLAGS.image_size, FLAGS.image_size))
    t_table, table_mb = common.timed(
        lambda: augment.rotation_table(np.repeat(apex[None, :, :, None], n, axis=0)).nbytes / 2 ** 20)
    batches_per_round = max(1, math.ceil(FLAGS.passes * n / FLAGS.batch_size / FLAGS.rounds))
    timed_examples = batches_per_round * FLAGS.rounds * FLAGS.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        list_path, flow_path = write_seed_files(recs, FLAGS.image_root, tmp)

        t_seed_setup, seed = common.timed(lambda: SeedLoader(
            list_path, flow_path, root_folder=FLAGS.image_root, batch_size=FLAGS.batch_size,
            new_height=FLAGS.image_size, new_width=FLAGS.image_size))
        t_tf_setup, ds = common.timed(lambda: input_pipeline.train_dataset(
            FLAGS.data_dir, input_pipeline.Selection(), FLAGS.batch_size, FLAGS.image_size,
            augment_data=True, balance=True, seed=0))
        ds_noaug = input_pipeline.train_dataset(FLAGS.data_dir, input_pipeline.Selection(), FLAGS.batch_size,
                                                FLAGS.image_size, augment_data=False, balance=True, seed=0)
        it, it_noaug = iter(ds), iter(ds_noaug)

        def run_seed():
            for _ in range(batches_per_round):
                seed.forward()

        def run_tf(iterator):
            def go():
                for _ in range(batches_per_round):
                    x, y = next(iterator)
                y.numpy()
            return go

        # First batch of each tf.data iterator: thread pools start, graphs are traced.
        t_tf_first, _ = common.timed(lambda: next(it)[1].numpy())
        next(it_noaug)
        for _ in range(FLAGS.warmup):                        # warm-up
            seed.forward()
            next(it)
            next(it_noaug)
        times = {"seed": [], "tf": [], "tf_noaug": []}
        for r in range(FLAGS.rounds):
            for name, fn in (("seed", run_seed), ("tf", run_tf(it)), ("tf_noaug", run_tf(it_noaug))):
                dt, _ = common.timed(fn)
                times[name].append(dt)
                print(f"round {r}: {name:8s} {batches_per_round * FLAGS.batch_size / dt:9.1f} examples/s",
                      flush=True)
    per = batches_per_round * FLAGS.batch_size
    rate = {k: timed_examples / sum(v) for k, v in times.items()}
    spread = {k: (per / max(v), per / min(v)) for k, v in times.items()}
    ratio = rate["tf"] / rate["seed"]
    ratio_noaug = rate["tf_noaug"] / rate["seed"]
    cold_seed = (t_seed_setup + n / rate["seed"])
    cold_tf = (t_tf_setup + t_tf_first + max(0, n - FLAGS.batch_size) / rate["tf"])
    print(f"seed {rate['seed']:.1f}/s  tf.data {rate['tf']:.1f}/s (no aug {rate['tf_noaug']:.1f}/s)  "
          f"ratio {ratio:.1f}x  setup seed {t_seed_setup:.2f}s tf {t_tf_setup:.2f}s", flush=True)

    rows = [
        ["seed loader re-creation (`benchmarks/seed_loader.py`): cv2.imread + Python augment, one sample at a time",
         f"{rate['seed']:.0f}", f"{spread['seed'][0]:.0f}–{spread['seed'][1]:.0f}", "1.0×", f"{t_seed_setup:.2f}"],
        ["`atn_tf` tf.data `train_dataset` (balanced, augment)",
         f"{rate['tf']:.0f}", f"{spread['tf'][0]:.0f}–{spread['tf'][1]:.0f}", f"**{ratio:.1f}×**",
         f"{t_tf_setup:.2f}"],
        ["`atn_tf` tf.data `train_dataset` (balanced, `--noaugment`)",
         f"{rate['tf_noaug']:.0f}", f"{spread['tf_noaug'][0]:.0f}–{spread['tf_noaug'][1]:.0f}",
         f"{ratio_noaug:.1f}×", "—"],
    ]
    md = "\n".join([
        common.preamble(load0),
        "",
        f"{n} real MEGC2019 samples, batch {FLAGS.batch_size}, apex {FLAGS.image_size}×{FLAGS.image_size}; "
        f"each loader timed over {FLAGS.rounds} alternating rounds of {per} examples "
        f"({timed_examples} examples ≈ {timed_examples / n:.1f} passes each) after {FLAGS.warmup} warm-up batches. "
        "The tf.data setup checks the shards against dataset_info.json, parses and PNG-decodes every "
        "record once into memory and builds the augmentation tables; the seed's setup reads the list and parses the 64×128 flow text of "
        "every sample.",
        "",
        common.markdown_table(["loader", "examples/s", "range over rounds", "ratio", "setup s"], rows, "lrrrr"),
        "",
        f"Ratio tf.data / seed loader, steady state: **{ratio:.1f}×** (target ≥ 10×). Including setup, one "
        f"pass of the {n} samples from nothing: seed {cold_seed:.2f} s, tf.data {cold_tf:.2f} s "
        f"({cold_seed / cold_tf:.1f}×). Parallel headroom at the start of the run: two CPU-bound "
        f"processes ran {headroom:.2f}× as fast as one (2.0 idle) — tf.data's parallel map can use a "
        "second core only as far as the background load leaves one; the seed loader is one thread.",
        "",
        f"Where the time goes: augmentation is table lookups. The setup rotates every apex by the 10 "
        f"non-zero whole-degree angles once ({t_table:.2f} s and {table_mb:.0f} MB of uint8 for {n} apexes "
        f"at {FLAGS.image_size} px, timed separately here; part of the tf.data setup above) and stacks "
        "each flow input with its mirror, so an augmented batch is gathers, a reverse and one fused "
        "add-and-clip (XLA) — about the cost of a plain batch. The seed re-creation pays per sample for "
        "`cv2.imread` (JPEG decode), a float64 resize, `cv2.warpAffine` and Python. The seed layer's own "
        "augmentation never ran (it read `probability`, its prototxts set `probability_value`), so the "
        "seed as released was faster than this re-creation with augmentation on.",
        "",
        "Changes made after earlier measurements (all 2026-11-25, each measured side by side with the "
        "seed loader in one process): (1) the training pipeline was per example (cached records → "
        "per-class `filter` → `sample_from_datasets` → per-example cast, `tf.cond` augmentation with "
        "`ImageProjectiveTransformV3` → `padded_batch`): ~1,200 examples/s augmented, ~4,300 without, "
        "about the seed loader's rate (load ~7). (2) It then decoded the selection once into memory, "
        "sampled record indices, batched them, and gathered, cast and augmented once per batch, with "
        "the rotation an XLA-compiled bilinear gather over every image of the batch (~0.25 ms an image) "
        "and the draws made per example in a `map_fn`: 6,139 augmented / 14,685 without vs the seed's "
        "1,697 on the idle machine (3.6×). (3) Rotating only the images drawn for rotation with "
        "`cv2.warpAffine` (~0.1 ms an image) inside a `tf.numpy_function` reached ~8,700 (5×): the "
        "resampling itself still cost ~0.8 ms a batch, plus the Python call. (4) Now the rotations are "
        "precomputed at whole degrees (as the seed drew them) — the rows above. Training itself is not "
        "input-bound in any of these (see Training step).",
    ])
    if FLAGS.write:
        common.write_section(TITLE, md)
        print(f"wrote the '## {TITLE}' section of {common.RESULTS}")
    return 0


if __name__ == "__main__":
    app.run(main)
