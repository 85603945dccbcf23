"""`python -m benchmarks.builder`: throughput of `tfrecords_builder`.

* Raw pipeline (face detection + crop, optical flow, 8x8 block features, encode, write):
  clips/s of `writer.build(Casme2Source(...))` on the synthetic demo corpus, TV-L1 and
  Farnebäck, with 1 and 2 worker processes (all four builds in one run, alternating
  methods, so they see the same machine load), plus a per-stage breakdown of one process.
* Shard writer alone: records/s of `writer.build` over samples already in memory (the 442
  real MEGC2019 records, decoded), at N and 4N records — equal rates mean it scales linearly.
"""

from __future__ import annotations

from atn_tf import quiet_start

if __name__ == "__main__":      # before anything imports TensorFlow: no C++ start-up lines
    quiet_start.install()

import dataclasses
import os
import tempfile
import time

from absl import app, flags

from benchmarks import common

flags.DEFINE_integer("subjects", 4, "Demo corpus subjects (x 3 classes x clips_per_class clips).")
flags.DEFINE_integer("clips_per_class", 2, "Demo clips per subject and class.")
flags.DEFINE_integer("frames", 16, "Frames per demo clip.")
flags.DEFINE_list("methods", ["tvl1", "farneback"], "Flow methods.")
flags.DEFINE_list("workers", ["1", "2"], "Worker process counts.")
flags.DEFINE_integer("rounds", 2, "Builds per (method, workers), in alternating order.")
flags.DEFINE_string("data_dir", "data/tfrecords/megc2019_crops", "Real records for the shard-writer test ('' skips).")
flags.DEFINE_integer("scale", 4, "The shard-writer test also writes scale x N records.")
flags.DEFINE_bool("write", True, "Write the section of benchmarks/results.md.")
FLAGS = flags.FLAGS

TITLE = "Builder"


@dataclasses.dataclass(frozen=True)
class MemorySource:
    """A Source whose samples are already decoded (isolates the shard writer)."""
    samples: tuple
    name: str = "memory"

    def plan(self):
        from tfrecords_builder.source import SampleSpec
        return [SampleSpec(s.sample_id, s.database, s.subject, i) for i, s in enumerate(self.samples)], []

    def load(self, spec):
        return self.samples[spec.payload]


def stage_breakdown(source, specs, method: str) -> dict:
    """Seconds per clip of each raw stage, in this process, over `specs`."""
    from tfrecords_builder import face, flow_features, optical_flow
    from tfrecords_builder.images import read_image
    from atn_tf.data.feature_spec import IMAGE_SIZE

    t = {"read + face detect + crop": 0.0, "read + crop frames": 0.0, "flow": 0.0, "block features": 0.0,
         "flow pairs": 0}
    for spec in specs:
        p = spec.payload
        t0 = time.perf_counter()
        apex_path = p["frames"][p["apex_index"]]
        gray = read_image(apex_path, gray=True)
        box = tuple(p["face_box"]) if p["face_box"] else face.detect_face(gray, apex_path)
        face.crop_resize(gray, box, IMAGE_SIZE, apex_path)
        t1 = time.perf_counter()
        frames = optical_flow.load_face_frames(p["frames"], box, source.flow_size, gray.shape[:2])
        t2 = time.perf_counter()
        flows = [optical_flow.compute_flow(a, b, method) for a, b in zip(frames[:-1], frames[1:])]
        t3 = time.perf_counter()
        flow_features.sequence_features(iter(flows))
        t4 = time.perf_counter()
        t["read + face detect + crop"] += t1 - t0
        t["read + crop frames"] += t2 - t1
        t["flow"] += t3 - t2
        t["block features"] += t4 - t3
        t["flow pairs"] += len(flows)
    n = len(specs)
    return {k: (v / n if k != "flow pairs" else v / n) for k, v in t.items()}


def writer_rate(samples: list, out_dir: str) -> tuple[float, float]:
    from tfrecords_builder import writer

    src = MemorySource(tuple(samples))
    dt, summary = common.timed(lambda: writer.build(src, out_dir, num_shards=2, workers=1, progress=False))
    assert summary.num_examples == len(samples)
    return len(samples) / dt, dt


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    load0 = common.load_str()
    import cv2  # noqa: F401
    import tensorflow as tf

    from tfrecords_builder import writer
    from tfrecords_builder.demo import generate_demo_corpus
    from tfrecords_builder.raw_sources import Casme2Source

    rows, stages = [], {}
    headroom = common.parallel_headroom()
    print(f"parallel headroom: 2 processes run {headroom:.2f}x one", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = generate_demo_corpus(os.path.join(tmp, "demo"), subjects=FLAGS.subjects,
                                      clips_per_class=FLAGS.clips_per_class, frames=FLAGS.frames)
        print(f"demo corpus: {corpus.num_clips} clips x {FLAGS.frames} frames", flush=True)
        runs = [(m, w) for w in map(int, FLAGS.workers) for m in FLAGS.methods]
        times: dict = {}
        for r in range(FLAGS.rounds):      # alternating order, so drifting load hits all alike
            for method, workers in (runs if r % 2 == 0 else runs[::-1]):
                src = Casme2Source(corpus.input_dir, corpus.coding_sheet, flow_method=method, database="demo")
                out = os.path.join(tmp, f"out-{method}-{workers}-{r}")
                dt, summary = common.timed(lambda: writer.build(src, out, num_shards=2, workers=workers,
                                                                progress=False))
                times.setdefault((method, workers), []).append(dt)
                print(f"{method:9s} workers {workers}: {summary.num_examples / dt:6.2f} clips/s ({dt:.1f} s)",
                      flush=True)
        for (method, workers), ts in times.items():
            n = summary.num_examples
            rows.append((method, workers, n, sum(ts) / len(ts), n * len(ts) / sum(ts),
                         f"{n / max(ts):.2f}–{n / min(ts):.2f}"))
        specs, _ = Casme2Source(corpus.input_dir, corpus.coding_sheet, database="demo").plan()
        few = specs[:6]
        for method in FLAGS.methods:
            stages[method] = stage_breakdown(Casme2Source(corpus.input_dir, corpus.coding_sheet,
                                                          flow_method=method, database="demo"), few, method)
            print(method, {k: round(v, 4) for k, v in stages[method].items()}, flush=True)

        wr = []
        if FLAGS.data_dir:
            from atn_tf.data import feature_spec, input_pipeline

            info = input_pipeline.read_dataset_info(FLAGS.data_dir)
            raw = [r.numpy() for p in input_pipeline.shard_paths(FLAGS.data_dir, info)
                   for r in tf.data.TFRecordDataset(p)]
            base = [feature_spec.decode_example_np(r) for r in raw]
            big = [dataclasses.replace(s, sample_id=f"{s.sample_id}-{k}", clip=f"{s.clip}-{k}")
                   for k in range(FLAGS.scale) for s in base]
            for samples in (base, big, base):      # N, scale x N, N again (load drift)
                rate, dt = writer_rate(samples, os.path.join(tmp, f"w{len(samples)}-{len(wr)}"))
                wr.append((len(samples), rate, dt))
                print(f"shard writer: {len(samples)} records {rate:.0f} records/s ({dt:.2f} s)", flush=True)

    base_rate = {m: r[4] for r in rows if r[1] == 1 for m in [r[0]]}
    table = [[m, w, n, f"{dt:.1f}", f"{cps:.2f}", rng,
              f"{cps / base_rate[m]:.2f}×" if m in base_rate else "—"]
             for m, w, n, dt, cps, rng in rows]
    stage_rows = []
    for m, st in stages.items():
        total = sum(v for k, v in st.items() if k != "flow pairs")
        stage_rows.append([m] + [f"{st[k] * 1e3:.0f}" for k in ("read + face detect + crop", "read + crop frames",
                                                                  "flow", "block features")]
                          + [f"{st['flow'] / max(st['flow pairs'], 1) * 1e3:.1f}", f"{total * 1e3:.0f}"])
    md = [
        common.preamble(load0),
        "",
        f"Raw pipeline: `writer.build(Casme2Source(..., database='demo'), num_shards=2)` on the synthetic "
        f"demo corpus ({rows[0][2] if rows else 0} clips × {FLAGS.frames} frames of 240×320; face by Haar "
        "cascade, flow on the 128×128 face crop, 8×8 block features, encode and write). Each "
        f"(method, workers) is built {FLAGS.rounds} times in one run, in alternating order. Clips/s includes planning, hashing and publishing.",
        "",
        common.markdown_table(["flow", "workers", "clips", "mean s", "clips/s", "range over builds",
                               "vs 1 worker"], table),
        "",
        f"Parallel headroom measured at the start of this run: two CPU-bound processes ran "
        f"**{headroom:.2f}×** as fast as one (2.0 on an idle 2-core machine). Workers are `spawn`ed "
        "processes (they import OpenCV, not TensorFlow: ~0.3 s each) and ship samples back by pickling; "
        "TV-L1 runs OpenCV on one thread per process. When the headroom is near 1 — other jobs keep "
        "both cores busy — a second worker only adds that overhead, and the 2-worker column says "
        "nothing about the code; re-run on an idle machine to see the scaling.",
        "",
        "Per-stage time of one process (ms per clip, mean over 6 clips; flow pairs per clip = frames − 1):",
        "",
        common.markdown_table(["flow", "read + face detect + crop", "read + crop frames", "flow",
                               "block features", "ms per flow pair", "total"], stage_rows),
    ]
    if wr:
        lin = wr[1][1] / ((wr[0][1] + wr[2][1]) / 2)
        md += ["",
               "Shard writer alone (`writer.build` over decoded samples in memory — encode PNG + Example, "
               "write 2 shards per database, fsync, sha256, publish; one process):",
               "",
               common.markdown_table(["records", "s", "records/s"],
                                     [[n, f"{dt:.2f}", f"{r:.0f}"] for n, r, dt in wr]),
               "",
               f"Records/s at {FLAGS.scale}N relative to N (mean of the two N runs): **{lin:.2f}** "
               f"(1.0 = linear scaling)."]
    if FLAGS.write:
        common.write_section(TITLE, "\n".join(md))
        print(f"wrote the '## {TITLE}' section of {common.RESULTS}")
    return 0


if __name__ == "__main__":
    app.run(main)
