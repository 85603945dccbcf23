"""Training one model under tf.distribute: custom loop, checkpoints, resume, summaries.

The loop is written out (rather than `model.fit`) so that a run resumes at the exact step
with the exact data stream (the iterator is part of the checkpoint), a NaN stops the run
without overwriting the last good checkpoint, and the global batch is split over replicas.
"""

from __future__ import annotations

import contextlib
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

from atn_tf import atomic_io
from atn_tf.data import augment, input_pipeline, provenance
from atn_tf.training import distribute, isda, soft_f1, supcon
from atn_tf.evaluation import protocols
from atn_tf.config import TrainConfig, parse_au_vocab, parse_domains
from atn_tf.models import DATABASE_INPUT, build_model, complete_inputs, fusion_databases, set_input_statistics
from atn_tf.models.networks import DISTILL_OUTPUT, fer_teacher, head_embedding

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
    selection: Optional[dict] = None   # inner-validation history and the step kept
    loop_seconds: float = 0.0          # time in the training loop (the rest is set-up)


def learning_rate_schedule(config: TrainConfig):
    """step: the seed's x lr_decay_rate every lr_decay_steps; cosine: linear warm-up for
    warmup_steps, then cosine decay to 0 at train_steps."""
    if config.lr_schedule == "cosine":
        decay_steps = max(1, config.train_steps - config.warmup_steps)
        if config.warmup_steps:
            return keras.optimizers.schedules.CosineDecay(
                0.0, decay_steps, alpha=0.0, warmup_target=config.learning_rate,
                warmup_steps=config.warmup_steps)
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps, alpha=0.0)
    return keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate, config.lr_decay_steps, config.lr_decay_rate, staircase=True)


def build_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """The seed's solver (SGD momentum 0.9, lr x0.1 every 500 steps, weight decay 5e-6) or
    AdamW; either with the step or cosine schedule.

    Keras applies weight decay decoupled from the gradient (AdamW style); with SGD this
    differs from Caffe's L2 term only through momentum, negligible at 5e-6.
    """
    schedule = learning_rate_schedule(config)
    if config.optimizer == "adamw":
        opt = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    else:
        opt = keras.optimizers.SGD(schedule, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.mixed_precision:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def au_vocab(config: TrainConfig) -> tuple[int, ...]:
    """The action units the training stream carries targets for: --au_vocab with --au_loss."""
    return parse_au_vocab(config.au_vocab) if config.au_loss > 0 else ()


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
    m = protocols.metrics(np.concatenate(labels), np.concatenate(preds))
    return {"accuracy": m["accuracy"], "uf1": m["uf1"]}


# ------------------------------------------------------------------ the training session

def classification_loss(config: TrainConfig, num_classes: int):
    """(int labels [B], logits [B, C]) -> per-clip loss [B]: cross-entropy with
    --label_smoothing; with --focal_gamma > 0 the focal form (alpha 1, so gamma 0 would be
    the same cross-entropy), which weights each clip by (1 - p_label)^gamma, more on the
    clips the model gets wrong; with --gce_q > 0 the generalised cross-entropy (Zhang and
    Sabuncu 2018), sum_c t_c (1 - p_c^q) / q over the (smoothed) target t, whose gradient is
    the cross-entropy's times p_label^q: less on those clips (q -> 0 is the cross-entropy)."""
    if config.gce_q > 0:
        q, smoothing = config.gce_q, config.label_smoothing

        def gce(y, logits):
            target = tf.one_hot(y, num_classes) * (1.0 - smoothing) + smoothing / num_classes
            p = tf.nn.softmax(tf.cast(logits, tf.float32))
            return tf.reduce_sum(target * (1.0 - tf.pow(p + 1e-12, q)), axis=-1) / q
        return gce
    if config.focal_gamma > 0:
        loss = keras.losses.CategoricalFocalCrossentropy(
            alpha=1.0, gamma=config.focal_gamma, from_logits=True,
            label_smoothing=config.label_smoothing, reduction=None)
    elif config.label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.label_smoothing, reduction=None)
    else:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    return lambda y, logits: loss(tf.one_hot(y, num_classes), logits)


def trained_head_keys(model: keras.Model, config: TrainConfig) -> list[str]:
    """The branch heads (`branch_heads`, late fusion) that the loss trains: all but the
    probe-fitted, fixed ones, so that the loss trains the branches exactly as without them."""
    fitted = probe_fitted_heads(config)
    return sorted(k for k in model.output if k.endswith("_logits") and k not in fitted)


def probe_fitted_heads(config: TrainConfig) -> list[str]:
    """The late-fusion heads fitted as linear probes before training and then kept fixed:
    `linear_logits` with --linear_fit=probe, `apex_logits` (frozen apex) with --apex_fit=probe."""
    return [layer for flag, layer in (("linear_fit", "linear_logits"), ("apex_fit", "apex_logits"))
            if getattr(config, flag) == "probe"]


def head_distillation(out: dict, keys) -> tf.Tensor:
    """--head_distill: each clip's mean over the heads of KL(average || head), the fused
    prediction, without gradient, as every head's soft target."""
    teacher = tf.nn.log_softmax(tf.stop_gradient(tf.cast(out["logits"], tf.float32)))
    terms = [tf.reduce_sum(tf.exp(teacher) * (teacher - tf.nn.log_softmax(tf.cast(out[k], tf.float32))), -1)
             for k in keys]
    return tf.add_n(terms) / len(terms)


def head_divergence(out: dict, keys) -> tf.Tensor:
    """--head_diversity: each clip's mean over the heads of ||p_head - p_average||^2 (bounded
    by 2), the average without gradient: Liu and Yao's negative-correlation penalty."""
    average = tf.nn.softmax(tf.stop_gradient(tf.cast(out["logits"], tf.float32)))
    terms = [tf.reduce_sum(tf.square(tf.nn.softmax(tf.cast(out[k], tf.float32)) - average), -1) for k in keys]
    return tf.add_n(terms) / len(terms)


def soft_f1_term(out: dict, keys, labels, num_classes: int) -> tf.Tensor:
    """--f1_loss: the mean over the heads `keys` of 1 - the batch's soft macro F1 (a scalar)."""
    return tf.add_n([soft_f1.soft_macro_f1_loss(labels, out[k], num_classes) for k in keys]) / len(keys)


class Session:
    """What is built once and reused: strategy, model, optimizer, step counter and the traced
    train step. `reset()` puts every variable back to its state right after building (the
    same initial weights, optimizer state, dropout RNG and step 0), so one session trains
    fold after fold exactly as freshly built ones would, without rebuilding or retracing."""

    def __init__(self, config: TrainConfig, strategy: Optional[tf.distribute.Strategy] = None):
        self.config = config
        self.strategy = strategy or distribute.make_strategy(config.strategy, config.cpu_devices)
        self.chief = distribute.is_chief(self.strategy)
        if config.batch_size % self.strategy.num_replicas_in_sync:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by "
                             f"{self.strategy.num_replicas_in_sync} replicas")
        if config.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        keras.utils.set_random_seed(config.seed)
        with self.strategy.scope():
            self.model = create_model(config)
            self.optimizer = build_optimizer(config)
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            # The moving average of the trainable weights (--ema_decay), beside the model.
            self.ema = [tf.Variable(v.value, trainable=False, name="ema")
                        for v in self.model.trainable_variables] if config.ema_decay > 0 else []
            # The frozen FER2013 network the ResNet apex is distilled from (--apex_distill).
            self.teacher = fer_teacher(config.image_size) if config.apex_distill > 0 else None
            # --logit_adjust: tau * log(class frequencies of the training part), added to the
            # logits the loss reads (`set_run_statistics`).
            self.logit_offset = tf.Variable(tf.zeros([self.model.output["logits"].shape[-1]]), trainable=False,
                                            name="logit_offset") if config.logit_adjust > 0 else None
            # --isda: each trained head's class moments of its embedding (`isda.ClassMoments`).
            self.isda = isda.trained_heads(self.model, trained_head_keys(self.model, config)) if config.isda > 0 \
                else {}
        # Keras seed generators (dropout masks) are not tracked by tf.train.Checkpoint; without
        # them a resumed run would draw other masks than an uninterrupted one.
        # Listed in layer order: their names carry process-global counters.
        self.rng_states = [v.value for v in self.model.non_trainable_variables if "seed_generator" in v.path]
        self._initial = [v.numpy() for v in self.model.variables]
        self._train_loop = self._make_train_loop()
        # Only the outputs asked for (a Python tuple, one trace each): a graph that also returns
        # the heads computes the probabilities in another order, off in the last digit.
        self._forward = tf.function(lambda x, names: {k: self.model(x, training=False)[k] for k in names},
                                    reduce_retracing=True)

    def set_statistics(self, data: dict) -> None:
        """The training part's statistics: the model's (`set_model_statistics`) and the
        run's (`set_run_statistics`)."""
        self.set_model_statistics(data)
        self.set_run_statistics(data)

    def set_model_statistics(self, data: dict) -> None:
        """What the model takes from the training part before training (checkpointed with
        it): its input normalisation and, with --linear_fit=probe / --apex_fit=probe, the
        fitted linear / apex head."""
        set_input_statistics(self.model, data)
        fitted = probe_fitted_heads(self.config)
        if fitted:
            from atn_tf.training import probe_head  # scikit-learn: only for the runs that use it
            groups = subject_keys(data)
            for layer in fitted:
                fit = probe_head.fit_probe_head(self.model, data, groups, layer)
                logging.info("%s: the probe with C=%g (inner UF1 %.3f)", layer, fit["C"], fit["inner_uf1"])

    def set_run_statistics(self, data: dict) -> None:
        """What training alone takes from the training part, not checkpointed (a resumed run
        recomputes it): the teacher's feature standardisation (its weights are the file's) and
        --logit_adjust's offset, tau * log of the class frequencies."""
        if self.teacher is not None:
            set_input_statistics(self.teacher, data)
        if self.logit_offset is not None:
            counts = np.bincount(np.asarray(data["label"]), minlength=self.logit_offset.shape[0])
            if not counts.all():
                raise ValueError(f"--logit_adjust: the training part has no clip of class(es) "
                                 f"{np.flatnonzero(counts == 0).tolist()}")
            self.logit_offset.assign(self.config.logit_adjust * np.log(counts / counts.sum()).astype(np.float32))

    def reset(self) -> None:
        for v, value in zip(self.model.variables, self._initial):
            v.assign(value)
        for v in self.optimizer.variables:
            v.assign(tf.zeros_like(v))
        self.step.assign(0)
        for head in self.isda.values():
            head.moments.reset()
        self.restart_average()

    def restart_average(self) -> None:
        """Start the moving average at the current weights (after a reset or loaded init weights)."""
        for a, v in zip(self.ema, self.model.trainable_variables):
            a.assign(v)

    @contextlib.contextmanager
    def averaged_weights(self):
        """Inside: the model holds the moving-average weights (no-op without --ema_decay)."""
        if not self.ema:
            yield
            return
        current = [v.numpy() for v in self.model.trainable_variables]
        self.adopt_average()
        try:
            yield
        finally:
            for value, v in zip(current, self.model.trainable_variables):
                v.assign(value)

    def adopt_average(self) -> None:
        """The finished model keeps the moving-average weights (as Keras' `use_ema` does)."""
        for a, v in zip(self.ema, self.model.trainable_variables):
            v.assign(a)

    def _make_losses(self):
        """-> (mixed, per_example). `mixed(inputs, labels)`: the batch (with --mixup, mixed)
        and the classification loss to use on it; `per_example(inputs, labels, out,
        target_loss, au_target, domain_target)`: each clip's training loss [B] -- the heads',
        --apex_distill's, --supcon's, --au_loss's and the adversaries' terms."""
        config, model, strategy = self.config, self.model, self.strategy
        num_classes = model.output["logits"].shape[-1]
        branch_keys = trained_head_keys(model, config)
        late = config.fusion == "late" and bool(branch_keys)
        class_loss = classification_loss(config, num_classes)
        if self.logit_offset is not None:     # Menon et al. 2021: the loss of logits + tau log(prior)
            def per_example_loss(y, logits):
                return class_loss(y, logits + self.logit_offset)
        else:
            per_example_loss = class_loss

        def mixed(inputs, labels):
            """--mixup: the mixed batch and its loss lam CE(y) + (1 - lam) CE(y'), with draws
            keyed by (seed, step, replica), so a resumed run draws the same."""
            if config.mixup <= 0:
                return inputs, per_example_loss
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            seed = tf.stack([tf.constant(config.seed, tf.int64),
                             self.step * strategy.num_replicas_in_sync + tf.cast(replica, tf.int64)])
            lam = augment.mixup_weights(config.mixup, tf.shape(labels)[0], seed)
            partner = tf.reverse(labels, [0])
            return augment.mixup(inputs, lam), lambda y, lg: (
                lam * per_example_loss(y, lg) + (1.0 - lam) * per_example_loss(partner, lg))

        def head_logits(key, labels, out):
            """A head's logits, as its loss reads them: with --isda, the surrogate's, at a
            strength of --isda x step / train_steps."""
            if key not in self.isda:
                return tf.cast(out[key], tf.float32)
            head = self.isda[key]
            strength = config.isda * tf.cast(self.step, tf.float32) / config.train_steps
            return isda.augmented_logits(out[key], labels, head.kernel(), head.moments.covariance(), strength)

        def example_loss(inputs, labels, out, target_loss):
            """The fused head's loss (with --branch_loss, plus the branch heads'; with late
            fusion, the branch heads', plus --head_distill's, minus --head_diversity's, plus
            --fused_loss x the fused logits'), plus --f1_loss's and --apex_distill's terms."""
            if branch_keys:
                branch_loss = tf.add_n([target_loss(labels, head_logits(k, labels, out))
                                        for k in branch_keys]) / len(branch_keys)
            if late:    # each head on its own loss; the averaged logits predict
                loss = branch_loss
                if config.head_distill:     # ... and learns the (fixed) average's prediction
                    loss += config.head_distill * head_distillation(out, branch_keys)
                if config.head_diversity:   # ... or moves away from it
                    loss -= config.head_diversity * head_divergence(out, branch_keys)
                if config.fused_loss:   # ... and, with --fused_loss, train together too
                    loss += config.fused_loss * target_loss(labels, tf.cast(out["logits"], tf.float32))
            else:
                loss = target_loss(labels, tf.cast(out["logits"], tf.float32))
                if branch_keys:
                    loss += config.branch_loss * branch_loss
            if config.f1_loss:     # a batch-level term, the same for every clip of the batch
                loss += config.f1_loss * soft_f1_term(out, branch_keys if late else ["logits"], labels, num_classes)
            if self.teacher is not None:
                target = tf.cast(self.teacher({"apex_image": inputs["apex_image"]}, training=False), tf.float32)
                loss += config.apex_distill * tf.reduce_mean(
                    tf.square(tf.cast(out[DISTILL_OUTPUT], tf.float32) - target), axis=-1)
            return loss

        au_keys = sorted(k for k in model.output if k.startswith("au_"))   # --au_loss's heads

        def au_loss(au_target, out):
            """--au_loss x the mean over AU heads of each clip's mean sigmoid cross-entropy;
            0 for the clips with no AUs coded (targets -1)."""
            coded = tf.cast(au_target[:, 0] >= 0, tf.float32)
            target = tf.maximum(au_target, 0.0)
            terms = [tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(target, tf.cast(out[k], tf.float32)), -1)
                     for k in au_keys]
            return config.au_loss * coded * tf.add_n(terms) / len(terms)

        adv_keys = sorted(k for k in model.output if k.startswith("adv_"))   # --adversary's heads

        def adversary_loss(domain_target, out):
            """--adversary_weight x the mean over the adversary heads of the domain's
            cross-entropy (their gradient reversal turns it against the branches)."""
            terms = [tf.nn.sparse_softmax_cross_entropy_with_logits(domain_target, tf.cast(out[k], tf.float32))
                     for k in adv_keys]
            return config.adversary_weight * tf.add_n(terms) / len(terms)

        contrasted = [head_embedding(model.output, k, "--supcon") for k in branch_keys] if config.supcon > 0 else []

        def contrastive(labels, out):
            """--supcon x the mean over the trained heads' embeddings of each clip's term."""
            terms = [supcon.contrastive_loss(out[k], labels, config.supcon_temperature) for k in contrasted]
            return config.supcon * tf.add_n(terms) / len(terms)

        def per_example(inputs, labels, out, target_loss, au_target, domain_target):
            loss = example_loss(inputs, labels, out, target_loss)
            if contrasted:
                loss += contrastive(labels, out)
            if au_keys:
                loss += au_loss(au_target, out)
            if adv_keys:
                loss += adversary_loss(domain_target, out)
            return loss

        return mixed, per_example

    def _make_replica_step(self):
        """One replica's step on its share of the global batch: forward pass, loss, gradients
        (a second pass with --sam_rho) and update -> (loss, labels, predictions)."""
        config, model, optimizer = self.config, self.model, self.optimizer
        mixed, per_example = self._make_losses()
        reads_database = bool(fusion_databases(model))

        def replica_step(inputs, labels):
            inputs = dict(inputs)
            au_target = inputs.pop("au_target", None)   # targets, not model inputs
            domain_target = inputs.pop("domain_target", None)
            inputs, target_loss = mixed(inputs, labels)
            if reads_database:   # only the fused logits read it, and no loss does
                inputs[DATABASE_INPUT] = tf.fill(tf.shape(inputs["flow_len"]), -1)

            def gradients():
                with tf.GradientTape() as tape:
                    out = model(inputs, training=True)
                    loss = tf.nn.compute_average_loss(
                        per_example(inputs, labels, out, target_loss, au_target, domain_target),
                        global_batch_size=config.batch_size)
                    if model.losses:    # kernel regularisers (the linear path's ridge penalty)
                        loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                    scaled = optimizer.scale_loss(loss) if config.mixed_precision else loss
                return loss, out, tape.gradient(scaled, model.trainable_variables)

            loss, out, grads = gradients()
            for head in self.isda.values():   # once per step (not per SAM pass), after the loss read them
                head.moments.update(out[head.embedding], labels)
            if config.sam_rho > 0:
                # Sharpness-aware minimisation (Foret et al. 2021): step with the gradient
                # taken at the worst weights within an L2 ball of radius rho. The shift comes
                # from each replica's own gradient, not the all-reduced one, so several
                # replicas step slightly differently from one device. The loss, labels and
                # predictions reported are the first pass's.
                moved = [(v, g) for v, g in zip(model.trainable_variables, grads) if g is not None]
                scale = config.sam_rho / (tf.linalg.global_norm([g for _, g in moved]) + 1e-12)
                shifts = [(v, tf.cast(g, v.dtype) * scale) for v, g in moved]
                for v, e in shifts:
                    v.assign_add(e)
                _, _, grads = gradients()
                for v, e in shifts:
                    v.assign_sub(e)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss, labels, tf.argmax(out["logits"], axis=-1, output_type=tf.int32)

        return tf.function(replica_step, jit_compile=True) if config.jit_compile else replica_step

    def _make_train_loop(self):
        """`train_loop(iterator, n)`: n training steps -> (losses [n], labels, predictions of
        the n global batches, concatenated)."""
        config, model, strategy = self.config, self.model, self.strategy
        replica_fn = self._make_replica_step()

        def one_step(it):
            inputs, labels = next(it)
            loss, labels, preds = strategy.run(replica_fn, args=(inputs, labels))
            loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
            self.step.assign_add(1)
            if self.ema:    # TF's ExponentialMovingAverage warm-up: early weights fade fast
                t = tf.cast(self.step, tf.float32)
                decay = tf.minimum(config.ema_decay, (1.0 + t) / (10.0 + t))
                for a, v in zip(self.ema, model.trainable_variables):
                    a.assign(decay * a + (1.0 - decay) * v.value)
            return loss, strategy.gather(labels, axis=0), strategy.gather(preds, axis=0)

        # Several steps per call, in one graph loop (as TF Model Garden's Orbit does): on the
        # small models here the host round trip of each step (~1-6 ms: fetch the loss,
        # labels and predictions, run Python) is 5-20 % of the step. Same kernels in the same
        # order, so the same weights as one call per step.
        @tf.function
        def train_loop(it, num_steps):
            losses = tf.TensorArray(tf.float32, size=num_steps)
            labels = tf.TensorArray(tf.int32, size=num_steps, infer_shape=False)
            preds = tf.TensorArray(tf.int32, size=num_steps, infer_shape=False)
            for i in tf.range(num_steps):
                loss, y, p = one_step(it)
                losses = losses.write(i, tf.cast(loss, tf.float32))
                labels = labels.write(i, tf.cast(y, tf.int32))
                preds = preds.write(i, tf.cast(p, tf.int32))
            return losses.stack(), labels.concat(), preds.concat()

        return train_loop

    def dataset(self, data: dict, skip_batches: int = 0, tables: Optional[dict] = None):
        config = self.config
        return self.strategy.distribute_datasets_from_function(
            lambda ctx: input_pipeline.dataset_from_arrays(
                data, config.batch_size, config.image_size, augment_data=config.augment,
                balance=config.balance, seed=config.seed, input_context=ctx, skip_batches=skip_batches,
                balance_by=config.balance_by, tables=tables, flow_shift=config.flow_shift,
                flow_seq_mirror=config.flow_seq_mirror, flow_u_flip=config.flow_u_flip,
                flow_erase=config.flow_erase, flow_zoom=config.flow_zoom, flow_rotate=config.flow_rotate,
                apex_shift=config.apex_shift, au_vocab=au_vocab(config), adversary=config.adversary,
                domains=parse_domains(config.adversary_domains)))

    def predict(self, data: dict, batch_size: int = 64) -> np.ndarray:
        """Class probabilities [N, C] of the arrays `data` (float64)."""
        return self.predict_outputs(data, ("probabilities",), batch_size)["probabilities"]

    def head_logits(self, data: dict, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Late fusion: each head's logits [N, C] (`<branch>_logits`, the ones the fused
        prediction averages), e.g. to study the fusion weights on inner validation."""
        names = [k for k in self.model.output if k.endswith("_logits") and not k.startswith(("adv_", "au_"))]
        return self.predict_outputs(data, tuple(names), batch_size)

    def predict_outputs(self, data: dict, names: tuple, batch_size: int = 64) -> dict[str, np.ndarray]:
        """The model's outputs `names` on the arrays `data`, in inference mode (float64)."""
        data = input_pipeline.resize_apex(data, self.config.image_size)
        out = {k: [] for k in names}
        for i in range(0, len(data["label"]), batch_size):
            part = input_pipeline.take_rows(data, np.arange(i, min(i + batch_size, len(data["label"]))))
            x = {"apex_image": tf.constant(part["apex_image"], tf.float32),
                 "flow_seq": tf.constant(part["flow_seq"], tf.float32),
                 "flow_len": tf.constant(part["flow_len"], tf.int32),
                 "flow_image": tf.constant(part["flow_image"], tf.float32)}
            y = self._forward(complete_inputs(self.model, x, part.get("database")), tuple(names))
            for k in names:
                out[k].append(y[k].numpy().astype(np.float64))
        return {k: np.concatenate(v) if v else np.zeros([0, 3]) for k, v in out.items()}


@dataclasses.dataclass
class Selector:
    """Checkpoint selection on the inner validation split: the step with the best UF1 (ties:
    lower loss, then the earlier step). Its state is plain data, saved beside checkpoints."""
    history: list = dataclasses.field(default_factory=list)   # [step, uf1, loss]
    best: Optional[list] = None
    best_weights: Optional[list] = None
    keep_probabilities: bool = False                             # development runs: every curve point
    probabilities: list = dataclasses.field(default_factory=list)   # [step, [[p0, p1, p2], ...]]

    def update(self, step: int, uf1: float, loss: float, model: keras.Model, probs=None) -> bool:
        self.history.append([step, uf1, loss])
        if self.keep_probabilities and probs is not None:
            self.probabilities.append([step, np.round(probs, 6).tolist()])
        if self.best is None or (uf1, -loss) > (self.best[1], -self.best[2]):
            self.best, self.best_weights = [step, uf1, loss], model.get_weights()
            return True
        return False

    def state(self) -> dict:
        return {"history": self.history, "best": self.best}


def _val_score(session: Session, val: dict) -> tuple[float, float, np.ndarray]:
    probs = session.predict(val)
    y = np.asarray(val["label"])
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))
    return protocols.metrics(y, probs.argmax(axis=1))["uf1"], loss, probs


def split_inner_validation(data: dict, config: TrainConfig) -> tuple[dict, Optional[dict]]:
    """(training arrays, inner-validation arrays or None) by `config.val_fraction` of each
    database's training subjects (`protocols.inner_validation_subjects`)."""
    if config.val_fraction <= 0:
        return data, None
    held = protocols.inner_validation_subjects(subject_keys(data).tolist(), config.val_fraction, config.seed)
    try:
        return split_by_subjects(data, held)
    except ValueError:
        raise ValueError(f"val_fraction {config.val_fraction}: the training part has too few subjects "
                         "for an inner validation split") from None


def subject_keys(data: dict) -> np.ndarray:
    """"database/subject" of every row of the arrays `data`."""
    return np.char.add(np.char.add(data["database"].astype(str), "/"), data["subject"].astype(str))


def split_by_subjects(data: dict, held) -> tuple[dict, dict]:
    """(rows of the other subjects, rows of the subjects `held`, "database/subject"); both
    must be non-empty."""
    is_val = np.isin(subject_keys(data), sorted(held))
    if not is_val.any() or is_val.all():
        raise ValueError(f"no rows on one side of the inner split ({int(is_val.sum())} of {is_val.size} held out)")
    return (input_pipeline.take_rows(data, np.flatnonzero(~is_val)),
            input_pipeline.take_rows(data, np.flatnonzero(is_val)))


def next_stop(current: int, end: int, periods) -> int:
    """The first step after `current` that is a multiple of one of `periods` (logging,
    checkpoints, scoring), or `end`: the steps up to it run in one call."""
    return min([end] + [(current // p + 1) * p for p in periods if p > 0])


def fit(session: Session, train_data: dict, val_data: Optional[dict] = None, *, resumed_from: int = 0,
        end: Optional[int] = None, manager=None, writer=None, bar=None, selector: Optional[Selector] = None,
        on_best=None, tables: Optional[dict] = None) -> tuple[list, int]:
    """The training loop: steps `resumed_from` .. `end` on `train_data`, logging, periodic
    checkpoints (`manager`), and inner-validation scoring every `eval_every` steps into
    `selector`. `tables`: prebuilt stream tables (`input_pipeline.stream_tables`). Returns
    ((step, loss) of every step run, the last step)."""
    config, optimizer = session.config, session.optimizer
    end = config.train_steps if end is None else end
    iterator = iter(session.dataset(train_data, skip_batches=resumed_from, tables=tables))
    writer = writer or tf.summary.create_noop_writer()
    losses, win_loss, win_labels, win_preds = [], [], [], []
    current = resumed_from
    scoring = val_data is not None and selector is not None
    periods = [config.log_every] + ([config.checkpoint_every] if manager else []) + \
        ([config.eval_every] if scoring else [])
    while current < end:
        stop = next_stop(current, end, periods)
        step_losses, labels, preds = session._train_loop(iterator, tf.constant(stop - current, tf.int32))
        step_losses = step_losses.numpy().astype(float)
        bad = np.flatnonzero(~np.isfinite(step_losses))
        if bad.size:
            raise TrainingDiverged(
                f"loss became {step_losses[bad[0]]} at step {current + bad[0] + 1}; stopped. The last good "
                f"checkpoint is kept: {(manager.latest_checkpoint if manager else None) or 'none yet'} "
                "(try a lower --learning_rate)")
        losses += [(current + i + 1, float(v)) for i, v in enumerate(step_losses)]
        current = int(session.step.numpy())
        win_loss += step_losses.tolist()
        win_labels.append(labels.numpy())
        win_preds.append(preds.numpy())
        if bar:
            bar.update(len(step_losses))
            bar.set_postfix(loss=f"{step_losses[-1]:.4f}")
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
        if scoring and (current % config.eval_every == 0 or current == config.train_steps):
            with session.averaged_weights():   # the selector keeps the weights it scored
                uf1, vloss, probs = _val_score(session, val_data)
                improved = selector.update(current, uf1, vloss, session.model, probs)
            with writer.as_default(step=current):
                tf.summary.scalar("inner_val_uf1", uf1)
                tf.summary.scalar("inner_val_loss", vloss)
            if improved and on_best:
                on_best(selector)
        if manager and (current % config.checkpoint_every == 0 or current == config.train_steps):
            manager.save(checkpoint_number=current)
    if current == config.train_steps:
        session.adopt_average()
    return losses, current


def train(config: TrainConfig, progress: bool = True, stop_after: Optional[int] = None) -> TrainResult:
    """Train (or resume) the model of `config` in `config.model_dir`.

    `stop_after` ends this call after that many steps (tests of resumption).
    """
    t_start = time.time()
    # Virtual CPU devices can only be made before TensorFlow starts, so the strategy first.
    strategy = distribute.make_strategy(config.strategy, config.cpu_devices)
    config, train_data, val_data = _training_data(config)
    session = Session(config, strategy)
    chief, model = session.chief, session.model
    if chief:
        config.save()
    selector = Selector() if val_data is not None else None
    manager, ckpt_dir = _restore_or_start(session, train_data, selector)
    resumed_from = int(session.step.numpy())

    def on_best(sel: Selector):
        if chief:
            _save_selector(sel, config.model_dir, model)

    writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train")) if chief \
        else tf.summary.create_noop_writer()
    end = config.train_steps if stop_after is None else min(config.train_steps, resumed_from + stop_after)
    bar = None
    if progress and chief:
        from tqdm import tqdm
        bar = tqdm(total=config.train_steps, initial=resumed_from, unit="step", desc=config.model,
                   dynamic_ncols=True)
    t_loop = time.time()
    try:
        losses, current = fit(session, train_data, val_data, resumed_from=resumed_from, end=end,
                              manager=manager, writer=writer, bar=bar, selector=selector, on_best=on_best)
    finally:
        if bar:
            bar.close()
        writer.flush()
        if not chief:
            shutil.rmtree(ckpt_dir, ignore_errors=True)

    seconds = time.time() - t_loop
    steps_run = current - resumed_from
    selected = None
    if selector is not None and current == config.train_steps and selector.best is not None:
        model.set_weights(selector.best_weights)
        selected = selector.state()
    result = TrainResult(model=model, final_step=current, final_loss=losses[-1][1] if losses else float("nan"),
                         losses=losses, seconds=time.time() - t_start,
                         steps_per_second=steps_run / seconds if seconds > 0 else 0.0,
                         samples_per_second=steps_run * config.batch_size / seconds if seconds > 0 else 0.0,
                         resumed_from=resumed_from, selection=selected, loop_seconds=seconds)
    if chief and current == config.train_steps:
        save_final(model, config, result)
    return result


def config_for_data(config: TrainConfig, info: dict) -> TrainConfig:
    """`config` checked against the data folder's dataset_info.json, with what it fills in
    (kept in config.json): the inputs' encodings (one per input), and with --adversary its
    domains; --au_loss needs records that code action units (DataError naming the file)."""
    config = provenance.check_training_config(config, info)
    if config.au_loss > 0:
        input_pipeline.require_action_units(info, config.data_dir)
    if config.adversary and not config.adversary_domains:
        config = config.replace(adversary_domains=",".join(input_pipeline.adversary_domains(info, config.adversary)))
    return config


def _training_data(config: TrainConfig) -> tuple[TrainConfig, dict, Optional[dict]]:
    """The records of `config` minus its held-out subjects/databases, apexes resized once
    (statistics, stream and scoring), split into the training part and the inner validation
    (None without --val_fraction); the config comes back with its input encodings checked."""
    info = input_pipeline.read_dataset_info(config.data_dir)
    selection = input_pipeline.Selection(config.test_subjects, config.test_databases)
    input_pipeline.validate_selection(info, selection, config.data_dir)
    config = config_for_data(config, info)
    data = input_pipeline.load_arrays(config.data_dir, info, selection)
    if data["label"].size == 0:
        raise input_pipeline.DataError(f"{config.data_dir}: no training records left after holding out "
                                       f"{selection}")
    data = input_pipeline.resize_apex(data, config.image_size)
    return (config, *split_inner_validation(data, config))


def _restore_or_start(session: Session, train_data: dict, selector: Optional[Selector]):
    """The checkpoint manager of the run: resumed from its newest checkpoint (and selector
    state), or a fresh start with any init weights and this training part's input
    statistics. -> (manager, checkpoint folder; a worker's is temporary)."""
    config, model = session.config, session.model
    ckpt = tf.train.Checkpoint(model=model, optimizer=session.optimizer, step=session.step,
                               rng=session.rng_states, **({"ema": session.ema} if session.ema else {}),
                               **({"isda": [v for head in session.isda.values() for v in head.moments.variables]}
                                  if session.isda else {}))
    ckpt_dir = os.path.join(config.model_dir, CHECKPOINT_DIR)
    if not session.chief:   # every worker takes part in saving; only the chief's copy is kept
        ckpt_dir = tempfile.mkdtemp(prefix="atn_worker_ckpt_")
    manager = tf.train.CheckpointManager(ckpt, ckpt_dir, max_to_keep=3)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("resumed from %s at step %d", manager.latest_checkpoint, int(session.step.numpy()))
        if selector is not None:
            _restore_selector(selector, config.model_dir, model)
    else:   # a fresh run: input statistics of this training part (after any init weights)
        if config.init_checkpoint:
            _load_init_checkpoint(model, config.init_checkpoint)
            session.restart_average()
        session.set_model_statistics(train_data)
    session.set_run_statistics(train_data)
    return manager, ckpt_dir


SELECTION_FILE = "selection.json"
BEST_WEIGHTS = "best.weights.h5"


def _save_selector(selector: Selector, model_dir: str, model: keras.Model) -> None:
    tmp = os.path.join(model_dir, "tmp-" + BEST_WEIGHTS)
    model.save_weights(tmp)
    os.replace(tmp, os.path.join(model_dir, BEST_WEIGHTS))
    atomic_io.write_json(os.path.join(model_dir, SELECTION_FILE), selector.state())


def _restore_selector(selector: Selector, model_dir: str, model: keras.Model) -> None:
    """A resumed run continues the selection where the checkpointed one left it."""
    path = os.path.join(model_dir, SELECTION_FILE)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    selector.history = list(state["history"])
    selector.best = state["best"]
    if selector.best is not None:
        current = model.get_weights()
        model.load_weights(os.path.join(model_dir, BEST_WEIGHTS))
        selector.best_weights = model.get_weights()
        model.set_weights(current)


def save_final(model: keras.Model, config: TrainConfig, result: TrainResult) -> None:
    path = os.path.join(config.model_dir, FINAL_MODEL)
    tmp = os.path.join(config.model_dir, "tmp-" + FINAL_MODEL)
    model.save(tmp)
    os.replace(tmp, path)
    summary = {"final_step": result.final_step, "final_loss": result.final_loss,
               "steps_per_second": result.steps_per_second, "samples_per_second": result.samples_per_second,
               "seconds": result.seconds, "resumed_from": result.resumed_from, "selection": result.selection}
    with open(os.path.join(config.model_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)


def load_trained(model_dir: str) -> tuple[keras.Model, TrainConfig]:
    """The final model and config of a finished run."""
    path = os.path.join(model_dir, FINAL_MODEL)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no finished model (train to the end first)")
    import atn_tf.models  # noqa: F401  registers the custom layers
    return keras.saving.load_model(path, compile=False), TrainConfig.load(model_dir)
