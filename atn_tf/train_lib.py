"""Training one model under tf.distribute: custom loop, checkpoints, resume, summaries.

The loop is written out (rather than `model.fit`) so that a run resumes at the exact step
with the exact data stream (the iterator is part of the checkpoint), a NaN stops the run
without overwriting the last good checkpoint, and the global batch is split over replicas.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from typing import Optional

import numpy as np
import tensorflow as tf
import keras
from absl import logging

from atn_tf import distribute, input_pipeline, provenance
from atn_tf.config import TrainConfig
from atn_tf.models import build_model

CHECKPOINT_DIR = "checkpoints"
FINAL_MODEL = "model.keras"
SUMMARY_FILE = "train_summary.json"


class TrainingDiverged(RuntimeError):
    """The loss became NaN/Inf; the last good checkpoint was kept."""


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    final_step: int
    final_loss: float
    losses: list            # (step, loss) of every step run in this call
    seconds: float
    steps_per_second: float
    samples_per_second: float
    resumed_from: int


def build_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """The seed's solver: SGD momentum 0.9, lr x0.1 every 500 steps, weight decay 5e-6.

    Keras applies weight decay decoupled from the gradient (AdamW style); with SGD this
    differs from Caffe's L2 term only through momentum, negligible at 5e-6.
    """
    schedule = keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate, config.lr_decay_steps, config.lr_decay_rate, staircase=True)
    opt = keras.optimizers.SGD(schedule, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.mixed_precision:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def create_model(config: TrainConfig) -> keras.Model:
    return build_model(config.model, sync_batchnorm=config.sync_batchnorm, **config.model_kwargs())


def _load_init_checkpoint(model: keras.Model, path: str) -> None:
    if path.endswith(".weights.h5"):
        model.load_weights(path)
    elif path.endswith(".keras"):
        src = keras.saving.load_model(path, compile=False)
        model.set_weights(src.get_weights())
    else:
        tf.train.Checkpoint(model=model).restore(path).expect_partial()
    logging.info("initialised weights from %s", path)


def _window_metrics(labels: list, preds: list) -> dict:
    from sklearn.metrics import f1_score

    y, p = np.concatenate(labels), np.concatenate(preds)
    return {"accuracy": float(np.mean(y == p)),
            "uf1": float(f1_score(y, p, labels=[0, 1, 2], average="macro", zero_division=0))}


def train(config: TrainConfig, progress: bool = True, stop_after: Optional[int] = None) -> TrainResult:
    """Train (or resume) the model of `config` in `config.model_dir`.

    `stop_after` ends this call after that many steps (tests of resumption).
    """
    t_start = time.time()
    strategy = distribute.make_strategy(config.strategy, config.cpu_devices)
    chief = distribute.is_chief(strategy)
    info = input_pipeline.read_dataset_info(config.data_dir)
    selection = input_pipeline.Selection(config.test_subjects, config.test_databases)
    input_pipeline.validate_selection(info, selection, config.data_dir)
    config = provenance.check_training_config(config, info)   # one encoding per input; kept in config.json
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by "
                         f"{strategy.num_replicas_in_sync} replicas")
    if chief:
        config.save()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(config.seed)

    with strategy.scope():
        model = create_model(config)
        optimizer = build_optimizer(config)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")

    # Keras seed generators (dropout masks) are not tracked by tf.train.Checkpoint; without
    # them a resumed run would draw other masks than an uninterrupted one.
    # Listed in layer order: their names carry process-global counters.
    rng_states = [v.value for v in model.non_trainable_variables if "seed_generator" in v.path]
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, rng=rng_states)
    ckpt_dir = os.path.join(config.model_dir, CHECKPOINT_DIR)
    if not chief:   # every worker takes part in saving; only the chief's copy is kept
        ckpt_dir = tempfile.mkdtemp(prefix="atn_worker_ckpt_")
    manager = tf.train.CheckpointManager(ckpt, ckpt_dir, max_to_keep=3)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("resumed from %s at step %d", manager.latest_checkpoint, int(step.numpy()))
    elif config.init_checkpoint:
        _load_init_checkpoint(model, config.init_checkpoint)
    resumed_from = int(step.numpy())

    # The data stream is a pure function of the seed, so resuming skips what was consumed
    # (distributed iterators cannot be checkpointed under every strategy).
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: input_pipeline.train_dataset(
            config.data_dir, selection, config.batch_size, config.image_size,
            augment_data=config.augment, balance=config.balance, seed=config.seed, input_context=ctx,
            skip_batches=resumed_from))
    iterator = iter(dataset)

    per_example_loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=None)

    def replica_step(inputs, labels):
        with tf.GradientTape() as tape:
            out = model(inputs, training=True)
            logits = tf.cast(out["logits"], tf.float32)
            loss = tf.nn.compute_average_loss(per_example_loss(labels, logits),
                                              global_batch_size=config.batch_size)
            scaled = optimizer.scale_loss(loss) if config.mixed_precision else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, labels, tf.argmax(logits, axis=-1, output_type=tf.int32)

    replica_fn = tf.function(replica_step, jit_compile=config.jit_compile) if config.jit_compile else replica_step

    @tf.function
    def train_step(it):
        inputs, labels = next(it)
        loss, labels, preds = strategy.run(replica_fn, args=(inputs, labels))
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        step.assign_add(1)
        return loss, strategy.gather(labels, axis=0), strategy.gather(preds, axis=0)

    writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train")) if chief \
        else tf.summary.create_noop_writer()
    end = config.train_steps if stop_after is None else min(config.train_steps, resumed_from + stop_after)
    bar = None
    if progress and chief:
        from tqdm import tqdm
        bar = tqdm(total=config.train_steps, initial=resumed_from, unit="step", desc=config.model,
                   dynamic_ncols=True)
    losses, win_loss, win_labels, win_preds = [], [], [], []
    t_loop, timed_from = time.time(), resumed_from   # throughput excludes the first (tracing) step
    current = resumed_from
    try:
        while current < end:
            loss, labels, preds = train_step(iterator)
            loss = float(loss)
            current = int(step.numpy())
            if not np.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss} at step {current}; stopped. The last good checkpoint is kept: "
                    f"{manager.latest_checkpoint or 'none yet'} (try a lower --learning_rate)")
            if current == resumed_from + 1:
                t_loop, timed_from = time.time(), current
            losses.append((current, loss))
            win_loss.append(loss)
            win_labels.append(labels.numpy())
            win_preds.append(preds.numpy())
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if current % config.log_every == 0 or current == end:
                m = _window_metrics(win_labels, win_preds)
                with writer.as_default(step=current):
                    tf.summary.scalar("loss", np.mean(win_loss))
                    tf.summary.scalar("learning_rate", float(optimizer.learning_rate))
                    tf.summary.scalar("accuracy", m["accuracy"])
                    tf.summary.scalar("uf1", m["uf1"])
                logging.info("step %d loss %.4f acc %.3f uf1 %.3f", current, np.mean(win_loss),
                             m["accuracy"], m["uf1"])
                win_loss, win_labels, win_preds = [], [], []
            if current % config.checkpoint_every == 0 or current == config.train_steps:
                manager.save(checkpoint_number=current)
    finally:
        if bar:
            bar.close()
        writer.flush()
        if not chief:
            shutil.rmtree(ckpt_dir, ignore_errors=True)

    seconds = time.time() - t_loop
    steps_run = current - timed_from
    result = TrainResult(model=model, final_step=current, final_loss=losses[-1][1] if losses else float("nan"),
                         losses=losses, seconds=time.time() - t_start,
                         steps_per_second=steps_run / seconds if seconds > 0 else 0.0,
                         samples_per_second=steps_run * config.batch_size / seconds if seconds > 0 else 0.0,
                         resumed_from=resumed_from)
    if chief and current == config.train_steps:
        save_final(model, config, result)
    return result


def save_final(model: keras.Model, config: TrainConfig, result: TrainResult) -> None:
    path = os.path.join(config.model_dir, FINAL_MODEL)
    tmp = os.path.join(config.model_dir, "tmp-" + FINAL_MODEL)
    model.save(tmp)
    os.replace(tmp, path)
    summary = {"final_step": result.final_step, "final_loss": result.final_loss,
               "steps_per_second": result.steps_per_second, "samples_per_second": result.samples_per_second,
               "seconds": result.seconds, "resumed_from": result.resumed_from}
    with open(os.path.join(config.model_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)


def load_trained(model_dir: str) -> tuple[keras.Model, TrainConfig]:
    """The final model and config of a finished run."""
    path = os.path.join(model_dir, FINAL_MODEL)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no finished model (train to the end first)")
    import atn_tf.models  # noqa: F401  registers the custom layers
    return keras.saving.load_model(path, compile=False), TrainConfig.load(model_dir)
