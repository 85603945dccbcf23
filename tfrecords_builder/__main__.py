"""`python -m tfrecords_builder`: databases -> sharded TFRecords + dataset_info.json.

With no flags it generates the synthetic demo corpus and builds it into data/tfrecords/demo.
"""

from __future__ import annotations

from atn_tf import quiet_start

if __name__ == "__main__":      # before anything imports TensorFlow: no C++ start-up lines
    quiet_start.install()

import os
import sys

from absl import app, flags, logging

from tfrecords_builder import sources
from tfrecords_builder.source import BuildError
from tfrecords_builder.writer import BuildFailed, build

FLAGS = flags.FLAGS
flags.DEFINE_enum("source", "demo", sources.SOURCE_NAMES, "Which input layout to read.")
flags.DEFINE_string("input_dir", None, "Root of the source's files (demo: where to generate the corpus).")
flags.DEFINE_string("output_dir", None, "Where shards and dataset_info.json go "
                    "(default data/tfrecords/<source>).")
flags.DEFINE_string("coding_sheet", None, "The database's coding sheet (.xlsx) for raw sources.")
flags.DEFINE_string("face_boxes", None, "Optional CSV sample_id,x,y,w,h used instead of face detection.")
flags.DEFINE_enum("flow_method", "tvl1", ["tvl1", "farneback"], "Optical flow for raw sources.")
flags.DEFINE_integer("num_shards", 2, "Shards per database.", lower_bound=1)
flags.DEFINE_integer("workers", 1, "Processes that load clips in parallel.", lower_bound=1)
flags.DEFINE_enum("on_error", "fail", ["fail", "skip"],
                  "fail: stop before anything is put in place; skip: write rejects.csv and go on.")
flags.DEFINE_boolean("resume", False, "Reuse shards already written whose recorded hash matches.")
flags.DEFINE_boolean("progress", True, "Show a progress bar.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    output_dir = FLAGS.output_dir or os.path.join("data", "tfrecords", FLAGS.source)
    os.makedirs(output_dir, exist_ok=True)
    try:
        source = sources.make_source(FLAGS.source, input_dir=FLAGS.input_dir,
                                     coding_sheet=FLAGS.coding_sheet, face_boxes=FLAGS.face_boxes,
                                     flow_method=FLAGS.flow_method)
        summary = build(source, output_dir, num_shards=FLAGS.num_shards, workers=FLAGS.workers,
                        on_error=FLAGS.on_error, resume=FLAGS.resume, progress=FLAGS.progress)
    except (BuildError, BuildFailed, ValueError) as e:
        logging.error("build failed: %s", e)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:       # disk full, permissions: nothing was published
        logging.error("build failed: %s", e)
        print(f"error: writing the output failed: {e}\nnothing was published in {output_dir}; "
              "fix the cause and rerun with --resume", file=sys.stderr)
        return 1
    print(summary.table())
    if summary.rejects:
        print(f"{len(summary.rejects)} rejected sample(s) listed in {os.path.join(output_dir, 'rejects.csv')}")
    return 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
