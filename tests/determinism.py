"""Determinism across processes: a digest computed in this process and in a fresh one.

`python -m tests.determinism KIND ARG...` prints the digest of KIND:
  encoding DIR   feature_spec.encode_example of a few samples (unicode ids, with and without flow image)
  stream DATA    the first batches of input_pipeline.train_dataset (augmented, balanced, seed 5)
  demo DIR       every file of the demo corpus generated into DIR

With ATN_DETERMINISM_MUTANT=1 in the environment (or `mutant=True` in process) a
process-dependent salt — Python's per-process string hash — enters the computation
through the project function under test: stable within a process, different across two.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUTANT_ENV = "ATN_DETERMINISM_MUTANT"


def _salt() -> int:
    return hash("atn-tf determinism mutant") % (1 << 30)


@contextlib.contextmanager
def _patched(module, name, make):
    real = getattr(module, name)
    setattr(module, name, make(real))
    try:
        yield
    finally:
        setattr(module, name, real)


def encoding_digest(_unused: str = "", mutant: bool = False) -> str:
    import dataclasses

    from atn_tf.data import feature_spec
    from tests.fakes import random_sample

    def salted(real):
        return lambda s: real(dataclasses.replace(s, sample_id=f"{s.sample_id}-{_salt()}"))

    with _patched(feature_spec, "encode_example", salted) if mutant else contextlib.nullcontext():
        h = hashlib.sha256()
        for sample in (random_sample(4), random_sample(5, steps=64, sample_id="samm-006-ü_1"),
                       random_sample(6, with_flow_image=False)):
            h.update(feature_spec.encode_example(sample))
        return h.hexdigest()


@contextlib.contextmanager
def global_tf_seed(seed):
    """Run with TF's global seed set to `seed`, then put the previous one back."""
    import tensorflow as tf
    from tensorflow.python.framework import random_seed

    previous = random_seed.get_seed(None)[0]
    tf.random.set_seed(seed)
    try:
        yield
    finally:
        tf.random.set_seed(previous)


def stream_digest(data_dir: str, mutant: bool = False, global_seed: int = 5) -> str:
    """The first 3 batches of the stream with seed 5. The stream also depends on TF's global
    seed (tf.data's shuffles combine it with their own seed), so it is set as train_lib sets
    it (`keras.utils.set_random_seed(config.seed)` before building the stream)."""
    from atn_tf.data import input_pipeline as ip

    def salted(real):
        return lambda *a, **kw: real(*a, **{**kw, "seed": kw.get("seed", 0) + _salt()})

    with _patched(ip, "train_dataset", salted) if mutant else contextlib.nullcontext(), global_tf_seed(global_seed):
        h = hashlib.sha256()
        for x, y in ip.train_dataset(data_dir, ip.Selection(), 8, seed=5).take(3):
            for k in sorted(x):
                h.update(x[k].numpy().tobytes())
            h.update(y.numpy().tobytes())
        return h.hexdigest()


def demo_digest(out_dir: str, mutant: bool = False) -> str:
    from tfrecords_builder import demo

    def salted(real):
        return lambda *a, **kw: real(*a, **{**kw, "seed": kw.get("seed", 0) + _salt()})

    with _patched(demo, "generate_demo_corpus", salted) if mutant else contextlib.nullcontext():
        corpus = demo.generate_demo_corpus(out_dir, subjects=2, clips_per_class=1, frames=8)
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(corpus.input_dir)):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(folder, f)
            h.update(os.path.relpath(p, corpus.input_dir).encode())
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


DIGESTS = {"encoding": encoding_digest, "stream": stream_digest, "demo": demo_digest}


def in_another_process(kind: str, arg: str, mutant: bool = False) -> str:
    """The digest computed by a fresh Python process (another string-hash seed)."""
    parent_seed = os.environ.get("PYTHONHASHSEED", "")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
               PYTHONHASHSEED="1" if parent_seed != "1" else "2", TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    env.pop(MUTANT_ENV, None)
    if mutant:
        env[MUTANT_ENV] = "1"
    proc = subprocess.run([sys.executable, "-m", "tests.determinism", kind, arg], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def check_same_across_processes(kind: str, arg_here: str, arg_there: str, mutant: bool = False) -> str:
    here = DIGESTS[kind](arg_here, mutant=mutant)
    there = in_another_process(kind, arg_there, mutant=mutant)
    assert here == there, f"{kind}: this process gives {here[:16]}..., another process {there[:16]}..."
    return here


if __name__ == "__main__":
    kind, arg = sys.argv[1], sys.argv[2]
    print(DIGESTS[kind](arg, mutant=os.environ.get(MUTANT_ENV) == "1"))
