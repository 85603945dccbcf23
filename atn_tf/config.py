"""The frozen experiment config: flags are parsed once into it and it is saved beside
every model (`<model_dir>/config.json`)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from atn_tf import atomic_io
from atn_tf.data import feature_spec

CONFIG_FILE = "config.json"
HEAD_BRANCHES = ("apex", "time", "flow", "linear")
# The union of the action units that BP4D and DISFA, the two standard AU benchmarks, code:
# fixed a priori, not read off these data.
AU_VOCAB = "1,2,4,5,6,7,9,10,12,14,15,17,20,23,24,25,26"


def parse_au_vocab(text: str) -> tuple[int, ...]:
    """`"1,2,4"` -> (1, 2, 4); ValueError naming the bad item (not an AU number 1..99, repeated)."""
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if not item.isdigit() or not 1 <= int(item) <= feature_spec.MAX_AU or int(item) in out:
            raise ValueError(f"au_vocab: bad item {item!r}: expected distinct action-unit numbers "
                             f"1..{feature_spec.MAX_AU}, comma-separated")
        out.append(int(item))
    if not out:
        raise ValueError("au_vocab is empty: name the action units to predict, e.g. 1,2,4")
    return tuple(out)


def parse_domains(text: str) -> tuple[str, ...]:
    """`adversary_domains` ("casme2,samm,smic" or "casme2/sub01,...") as a tuple, in head order."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_head_weights(text: str) -> dict[str, float]:
    """`"apex=0.5,time=0.5"` -> {"apex": 0.5, "time": 0.5}; ValueError naming the bad item."""
    weights = {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        name, sep, value = item.partition("=")
        try:
            weight = float(value) if sep else float("nan")
        except ValueError:
            weight = float("nan")
        if name.strip() not in HEAD_BRANCHES or not weight >= 0 or name.strip() in weights:
            raise ValueError(f"head_weights: bad item {item!r}: expected <branch>=<weight >= 0>, once per "
                             f"branch, branch one of {HEAD_BRANCHES}")
        weights[name.strip()] = weight
    return weights


def parse_database_head_weights(text: str) -> dict[str, dict[str, float]]:
    """`"samm:apex=2,linear=2;smic:apex=0"` -> {"samm": {...}, "smic": {...}}, sorted by
    database (each entry as `parse_head_weights`); ValueError naming the bad entry."""
    out = {}
    for entry in (x.strip() for x in text.split(";") if x.strip()):
        database, sep, weights = entry.partition(":")
        database = database.strip()
        if not sep or not database or database in out:
            raise ValueError(f"database_head_weights: bad entry {entry!r}: expected "
                             "<database>:<branch>=<weight>,... once per database, entries separated by ';'")
        out[database] = parse_head_weights(weights)
    return dict(sorted(out.items()))


# The allowed values of the recipe's string fields.
CHOICES = {"balance_by": ("class", "database_class"), "optimizer": ("sgd", "adamw"),
           "lr_schedule": ("step", "cosine"), "embedding_scale": ("none", "learned"),
           "apex_backbone": ("resnet", "fer_xception"), "apex_init": ("", "fer2013"),
           "flow_backbone": ("cnn", "fer_xception", "transformer"), "flow_init": ("", "fer2013"),
           "time_pool": ("mean", "last"),
           "flow_seq_repr": ("polar", "cartesian"), "fusion": ("concat", "late"),
           "adversary": ("", "database", "subject"),
           "linear_inputs": ("all", "flow_seq"), "linear_fit": ("train", "probe"),
           "apex_fit": ("train", "probe"),
           "apex_head_input": ("embedding", "distill"), "flow_seq_mirror": feature_spec.FLOW_SEQ_MIRRORS}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data_dir: str = "data/tfrecords/demo"
    model_dir: str = "runs/demo"
    model: str = "atn"
    # Held-out part (never used for training): "database/subject" ids or database names.
    test_subjects: tuple[str, ...] = ()
    test_databases: tuple[str, ...] = ()
    # Seed recipe (DESIGN.md §3).
    train_steps: int = 2500
    batch_size: int = 16                    # global, split across replicas
    learning_rate: float = 0.01
    lr_decay_steps: int = 500
    lr_decay_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-6
    dropout: float = 0.5
    # Size of the network (CPU-sized configs shrink these, never the structure).
    image_size: int = 224
    width: int = 64
    flow_width: int = 0                     # flow-image CNN channels (0: the apex's width)
    flow_backbone: str = "cnn"              # cnn (shallow, from scratch) | fer_xception (per channel) | transformer
    flow_init: str = ""                     # "" (from scratch) | fer2013 (fer_xception only)
    lstm_units: int = 512
    sync_batchnorm: bool = True             # replicas share BN statistics: same curve as one device
    augment: bool = True
    balance: bool = True                    # class-balanced sampling of the training stream
    flow_shift: int = 0                     # augment: translate the flow image by <= this many pixels
    apex_shift: int = 0                     # augment: translate the apex (at image_size) likewise
    flow_erase: int = 0                     # augment: p = 0.5, an s x s square of the flow image -> its median
    flow_zoom: float = 0.0                  # augment: p = 0.5, scale the flow image by [1/(1+z), 1+z]
    flow_rotate: float = 0.0                # augment: p = 0.5, rotate the flow image by [-d, d] degrees
    flow_u_flip: float = 0.0                # augment: negate the flow inputs' horizontal motion with this p
    flow_seq_mirror: str = "reflect"        # mirror of flow_seq: reflect (angles a -> pi - a) | columns (angles kept)
    mixup: float = 0.0                      # > 0: mixup in the train step, lambda ~ Beta(mixup, mixup)
    # Recipe options (docs/results.md, "Why the deep models lost to linear probes"); the
    # defaults are the seed recipe.
    balance_by: str = "class"               # class | database_class (equal weight per pair)
    optimizer: str = "sgd"                  # sgd (momentum) | adamw
    lr_schedule: str = "step"               # step (x lr_decay_rate every lr_decay_steps) | cosine
    warmup_steps: int = 0                   # linear warm-up before the cosine decay
    label_smoothing: float = 0.0
    focal_gamma: float = 0.0                # > 0: focal cross-entropy, (1 - p_y)^gamma down-weights easy clips
    gce_q: float = 0.0                      # > 0: generalised cross-entropy (1 - p_y^q) / q, robust to label noise
    sam_rho: float = 0.0                    # > 0: sharpness-aware minimisation, ball of this radius (2 passes per step)
    logit_adjust: float = 0.0               # > 0 (with --nobalance): the loss reads logits + tau log(class prior)
    isda: float = 0.0                       # > 0 (fusion=late): ISDA on the trained heads, at this final strength
    supcon: float = 0.0                     # > 0 (fusion=late): supervised contrastive term on the heads' embeddings
    supcon_temperature: float = 0.1         # its temperature
    f1_loss: float = 0.0                    # > 0: weight of a soft macro-F1 term on the batch (training/soft_f1.py)
    input_norm: bool = False                # standardise inputs with training-fold statistics
    flow_sample_norm: bool = False          # standardise each flow image per channel over its own pixels
    embedding_scale: str = "none"           # none | learned (scale on the L2-normalised embeddings)
    embedding_scale_init: float = 8.0       # the learned scale's starting value
    time_pool: str = "mean"                 # mean (the paper's: over the real steps) | last (LSTM's last real step)
    flow_seq_repr: str = "polar"            # polar (the records' angle, magnitude) | cartesian (m cos a, m sin a)
    apex_backbone: str = "resnet"           # resnet (the paper's) | fer_xception
    apex_init: str = ""                     # "" (from scratch) | fer2013 (fer_xception only)
    freeze_apex: bool = False               # keep the apex branch's weights fixed
    apex_feature_norm: bool = False         # fer_xception: standardise its pooled features (training fold)
    # > 0 (ResNet apex): add apex_distill x the mean squared error between a linear read-out of
    # the apex embedding and the frozen FER2013 mini-Xception's standardised features of the
    # same training apex (networks.fer_teacher): the FER model distilled into the ResNet.
    apex_distill: float = 0.0
    # The share of the label loss's gradient that reaches the ResNet apex branch (1: all, the
    # paper's; 0: none, so with apex_distill the branch learns from the teacher alone and the
    # heads read its features). From scratch on 442 clips the apex fits the training
    # subjects within a few hundred steps and the fused head then leans on it.
    apex_label_grad: float = 1.0
    # What the heads read of the ResNet apex: its embedding (the paper's) | distill: the
    # L2-normalised read-out fitted to the teacher (apex_distill > 0), i.e. the student's
    # estimate of the FER2013 features, without the embedding's directions the teacher
    # does not constrain (with apex_label_grad=0, nothing else trains them).
    apex_head_input: str = "embedding"
    # > 0: a linear head on each branch embedding adds branch_loss x its cross-entropy
    # (mean over branches) to the fused head's; only the fused head predicts.
    branch_loss: float = 0.0
    # concat (the paper's: one head on the concatenated embeddings) | late: a head per
    # branch, logits averaged, each head trained on its own cross-entropy only.
    fusion: str = "concat"
    # fusion=late: K independently initialised copies of every trained branch, each with its
    # own head and loss; a branch's logits are the mean of its copies'. A frozen apex
    # network is computed once and shared (each copy has its own head on it).
    members: int = 1
    # fusion=late: > 0 adds fused_loss x the cross-entropy of the averaged logits (what
    # predicts) to the heads' own losses, so the heads also learn to complement each other.
    fused_loss: float = 0.0
    # fusion=late: > 0 adds head_distill x KL(averaged prediction || head) to each trained
    # head's loss, the average held fixed (online distillation of the ensemble into its heads).
    head_distill: float = 0.0
    # fusion=late: > 0 subtracts head_diversity x the squared distance of each trained head's
    # probabilities from the (fixed) averaged prediction: negative correlation learning.
    head_diversity: float = 0.0
    # fusion=late: "branch=w,..." (apex | time | flow | linear) weights the branches' heads in
    # the average that predicts (unnamed: 1; copies of `members` take their branch's);
    # training is unchanged, as each head learns from its own loss.
    head_weights: str = ""
    # fusion=late: the head weights of clips of these databases (a model input says which);
    # others use head_weights. "db:branch=w,...;db:..."
    database_head_weights: str = ""
    # > 0: an auxiliary loss, this weight x the mean sigmoid cross-entropy of an action-unit
    # head on each motion branch (time, flow) against the AUs the coding sheets give
    # (`au_vocab`); clips whose source codes none (SMIC) are left out of it. Prediction is
    # unchanged unless au_class_heads.
    au_loss: float = 0.0
    au_vocab: str = AU_VOCAB
    # With au_loss and fusion=late: a class head on each AU head's probabilities, trained on
    # the labels and weighted 1 in the average that predicts.
    au_class_heads: bool = False
    # Domain-adversarial training: "database" | "subject" adds a head on each motion branch
    # (time, flow) that predicts the clip's database / subject through a gradient reversal,
    # trained with adversary_weight x its cross-entropy, so the branches learn to make the
    # domain unreadable. Prediction is unchanged. adversary_domains: the domains, in head
    # order, filled from the data folder's dataset_info.json at the start of training.
    adversary: str = ""
    adversary_weight: float = 0.1
    adversary_domains: str = ""
    # Test-time mirroring inside the model: at inference, the mean of the logits of the
    # inputs and of their horizontal mirrors (networks.build_model); training unchanged.
    mirror_tta: bool = False
    # Test-time translation of the flow image inside the model: at inference, the flow head
    # reads the mean of its embeddings over the image shifted by every (dy, dx) in -r..r.
    flow_shift_tta: int = 0
    flow_mixstyle: float = 0.0              # > 0: MixStyle with this p after the flow CNN's first two layers
    flow_kernel: int = 3                    # the flow CNN's kernel size ...
    flow_layers: int = 3                    # ... and number of conv layers (backbone.flow_branch)
    # Modality dropout (fusion=concat): per training example, one branch's embedding, drawn
    # at random, is zeroed with this probability before the concatenation.
    branch_dropout: float = 0.0
    # > 0: keep an exponential moving average of the trainable weights (this decay, warmed up
    # as min(decay, (1 + step) / (10 + step))); inner-validation scoring and the finished
    # model use the averaged weights.
    ema_decay: float = 0.0
    # A linear path on the standardised flow inputs (networks.linear_path): the first
    # linear_steps steps of flow_seq and (linear_inputs=all) the flow image's pixels;
    # linear_l2 is its kernel's ridge penalty. fusion=concat: its logits are added to the
    # head's; fusion=late: it is one more head, averaged with the branches' and trained on
    # its own cross-entropy (the linear probe inside the model).
    linear_path: bool = False
    linear_steps: int = 4
    linear_l2: float = 0.0
    linear_inputs: str = "all"
    # train: the linear path learns with the network | probe (fusion=late): fitted before
    # training as the linear probe (logistic regression, C by inner grouped CV on the
    # training subjects; atn_tf.training.probe_head), then kept fixed.
    linear_fit: str = "train"
    # train | probe (fusion=late, frozen FER2013 apex): the apex head is fitted the same way
    # on the apex features it reads, then kept fixed (its trained head lost to that probe).
    apex_fit: str = "train"
    # Checkpoint selection on an inner validation split of the training subjects (never the
    # held-out part): val_fraction of each database's training subjects, scored every
    # eval_every steps; the step with the best inner-validation UF1 is kept.
    val_fraction: float = 0.0
    eval_every: int = 0
    init_checkpoint: Optional[str] = None
    strategy: str = "auto"
    mixed_precision: bool = False
    jit_compile: bool = False
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 25
    cpu_devices: int = 0                    # >1: split the CPU into virtual devices (tests, demos)
    # Encodings of the model's inputs ("flow_seq=tvl1_blocks8_t64,..."; atn_tf.data.provenance):
    # filled from the data folder's dataset_info.json at the start of training.
    feature_encodings: str = ""

    def __post_init__(self):
        """Refuses a bad setting, or a bad combination, with a ValueError that names it."""
        self._check_sizes()
        self._check_fusion()
        self._check_augmentation()
        self._check_apex()
        self._check_losses()
        self._check_selection()
        # Lists from JSON or flags become tuples so the config stays hashable and frozen.
        object.__setattr__(self, "test_subjects", tuple(self.test_subjects))
        object.__setattr__(self, "test_databases", tuple(self.test_databases))

    def _check_sizes(self):
        """Sizes, rates and the named choices."""
        for name in ("train_steps", "batch_size", "image_size", "width", "lstm_units",
                     "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.strategy not in ("auto", "default", "mirrored", "multi_worker"):
            raise ValueError(f"unknown strategy {self.strategy!r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.flow_width < 0:
            raise ValueError(f"flow_width must be >= 0, got {self.flow_width}")
        if self.linear_steps < 1 or self.linear_l2 < 0:
            raise ValueError(f"linear_steps must be >= 1 and linear_l2 >= 0, got {self.linear_steps}, "
                             f"{self.linear_l2}")

    def _check_fusion(self):
        """How the branches are fused and their heads weighted and fitted."""
        if self.branch_loss < 0:
            raise ValueError(f"branch_loss must be >= 0, got {self.branch_loss}")
        if self.fusion == "late" and self.branch_loss > 0:
            raise ValueError("fusion=late trains a head per branch already: drop branch_loss")
        for flag, why in (("fused_loss", "fusion=concat trains the fused head alone already"),
                          ("head_distill", "it distils the average of the heads into each head"),
                          ("head_diversity", "it pushes each head away from the average of the heads")):
            value = getattr(self, flag)     # the late-fusion loss terms on the averaged prediction
            if value < 0 or (value > 0 and self.fusion != "late"):
                raise ValueError(f"{flag}={value}: must be >= 0, and > 0 only with fusion=late ({why})")
        if parse_head_weights(self.head_weights) and self.fusion != "late":
            raise ValueError(f"head_weights={self.head_weights!r}: weights the heads of fusion=late")
        if parse_database_head_weights(self.database_head_weights) and (
                self.fusion != "late" or self.fused_loss > 0 or self.au_loss > 0):
            # Training feeds no database (the heads learn on their own losses), so nothing
            # it optimises may read the fused logits.
            raise ValueError(f"database_head_weights={self.database_head_weights!r}: weights the heads of "
                             "fusion=late at prediction; not with fused_loss or au_loss, which train on the "
                             "fused logits")
        if self.linear_fit == "probe" and not (self.linear_path and self.fusion == "late" and not self.mirror_tta):
            raise ValueError("linear_fit=probe fits the late-fusion linear head: it needs linear_path and "
                             "fusion=late, without mirror_tta")
        if self.apex_fit == "probe" and not (
                self.fusion == "late" and self.model in ("atn", "atn_flow") and self.apex_backbone == "fer_xception"
                and self.freeze_apex and not self.mirror_tta and self.members == 1):
            raise ValueError("apex_fit=probe fits the late-fusion apex head on frozen features: it needs an apex "
                             "branch (atn, atn_flow), fusion=late, apex_backbone=fer_xception with freeze_apex, "
                             "one member and no mirror_tta")
        if self.members < 1 or (self.members > 1 and self.fusion != "late"):
            raise ValueError(f"members={self.members}: must be >= 1, and > 1 only with fusion=late")
        if not 0.0 <= self.branch_dropout < 1.0 or (self.branch_dropout > 0 and self.fusion == "late"):
            raise ValueError(f"branch_dropout={self.branch_dropout}: must be in [0, 1), with fusion=concat")

    def _check_augmentation(self):
        """Training augmentation and test-time views."""
        for name in ("flow_shift", "apex_shift", "flow_erase"):
            if getattr(self, name) < 0 or (getattr(self, name) and not self.augment):
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0, and > 0 only with augment")
        if not 0 <= self.flow_shift_tta < feature_spec.FLOW_IMAGE_SIZE // 2:
            raise ValueError(f"flow_shift_tta={self.flow_shift_tta}: must be in [0, {feature_spec.FLOW_IMAGE_SIZE // 2})")
        if self.flow_erase > feature_spec.FLOW_IMAGE_SIZE:
            raise ValueError(f"flow_erase={self.flow_erase}: the flow image is {feature_spec.FLOW_IMAGE_SIZE} pixels a side")
        if not 0 <= self.flow_zoom < 1 or (self.flow_zoom and not self.augment):
            raise ValueError(f"flow_zoom={self.flow_zoom}: must be in [0, 1), and > 0 only with augment")
        if not 0 <= self.flow_rotate <= 45 or (self.flow_rotate and not self.augment):   # a jitter, not a turn
            raise ValueError(f"flow_rotate={self.flow_rotate}: must be in [0, 45] degrees, and > 0 only with augment")
        if not 0 <= self.flow_u_flip <= 1 or (self.flow_u_flip and not self.augment):
            raise ValueError(f"flow_u_flip={self.flow_u_flip}: must be in [0, 1], and > 0 only with augment")

    def _check_apex(self):
        """The ResNet apex branch's distillation options."""
        if self.apex_distill < 0 or (self.apex_distill > 0 and self.apex_backbone != "resnet"):
            raise ValueError(f"apex_distill={self.apex_distill}: must be >= 0, and > 0 only with apex_backbone=resnet")
        if not 0 <= self.apex_label_grad <= 1 or (self.apex_label_grad < 1 and self.apex_backbone != "resnet"):
            raise ValueError(f"apex_label_grad={self.apex_label_grad}: must be in [0, 1], and < 1 only with "
                             "apex_backbone=resnet")
        if self.apex_head_input == "distill" and self.apex_distill <= 0:
            raise ValueError("apex_head_input=distill reads the apex_distill read-out: set apex_distill > 0")

    def _check_losses(self):
        """The training loss's terms and what each needs."""
        if self.mixup < 0:
            raise ValueError(f"mixup must be >= 0 (the Beta distribution's alpha; 0: off), got {self.mixup}")
        parse_au_vocab(self.au_vocab)
        if self.au_loss < 0 or (self.au_loss > 0 and self.mixup > 0):
            raise ValueError(f"au_loss={self.au_loss}: must be >= 0, and > 0 only without mixup "
                             "(mixup blends the inputs, not their action units)")
        if self.au_class_heads and not (self.au_loss > 0 and self.fusion == "late"):
            raise ValueError("au_class_heads reads the action-unit heads into the late-fusion average: "
                             "it needs au_loss > 0 and fusion=late")
        if self.adversary and (self.adversary_weight <= 0 or self.mixup > 0):
            raise ValueError(f"adversary={self.adversary!r}: needs adversary_weight > 0 (got "
                             f"{self.adversary_weight}) and no mixup (mixup blends the inputs, not their domains)")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.focal_gamma < 0 or self.sam_rho < 0:
            raise ValueError(f"focal_gamma and sam_rho must be >= 0, got {self.focal_gamma}, {self.sam_rho}")
        if self.logit_adjust < 0 or (self.logit_adjust and self.balance):
            raise ValueError(f"logit_adjust={self.logit_adjust}: must be >= 0, and > 0 only with balance off "
                             "(--nobalance): it corrects the natural class frequencies that balancing removes")
        # --isda and --supcon read each late-fusion head's own embedding, paired with its label.
        head_embeddings = self.fusion == "late" and self.members == 1 and not self.mirror_tta and self.mixup == 0
        if self.isda < 0 or (self.isda and not head_embeddings):
            raise ValueError(f"isda={self.isda}: must be >= 0, and > 0 only with fusion=late, members=1, no "
                             "mirror_tta and no mixup (it augments each branch head's own embedding, per label)")
        if self.supcon < 0 or self.supcon_temperature <= 0 or (self.supcon and not head_embeddings):
            raise ValueError(f"supcon={self.supcon}, supcon_temperature={self.supcon_temperature}: must be >= 0 "
                             "and > 0; supcon > 0 only with fusion=late, members=1, no mirror_tta and no mixup "
                             "(it contrasts each branch head's own embedding, by label)")
        if self.f1_loss < 0 or (self.f1_loss > 0 and self.mixup > 0):
            raise ValueError(f"f1_loss={self.f1_loss}: must be >= 0, and > 0 only without mixup "
                             "(it counts each clip as its one label)")
        if not 0 <= self.gce_q <= 1 or (self.gce_q and self.focal_gamma):
            raise ValueError(f"gce_q={self.gce_q}: must be in [0, 1], and not with focal_gamma")

    def _check_selection(self):
        """Checkpoint selection on inner validation."""
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.warmup_steps < 0 or self.eval_every < 0:
            raise ValueError("warmup_steps and eval_every must be >= 0")
        if (self.val_fraction > 0) != (self.eval_every > 0):
            raise ValueError("checkpoint selection needs both val_fraction > 0 and eval_every > 0")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str) -> "TrainConfig":
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a valid config ({e})") from None

    def save(self, model_dir: Optional[str] = None) -> str:
        model_dir = model_dir or self.model_dir
        return atomic_io.write_text(os.path.join(model_dir, CONFIG_FILE), self.to_json())

    def model_kwargs(self) -> dict:
        if self.adversary and not self.adversary_domains:
            raise ValueError(f"adversary={self.adversary!r} needs adversary_domains, which "
                             "train_lib.config_for_data fills from the records' dataset_info.json")
        return dict(image_size=self.image_size, width=self.width, lstm_units=self.lstm_units,
                    dropout=self.dropout, input_norm=self.input_norm, embedding_scale=self.embedding_scale,
                    apex_backbone=self.apex_backbone, apex_init=self.apex_init, freeze_apex=self.freeze_apex,
                    apex_feature_norm=self.apex_feature_norm, branch_heads=self.branch_loss > 0,
                    apex_distill=self.apex_distill > 0, apex_label_grad=self.apex_label_grad,
                    apex_head_input=self.apex_head_input,
                    embedding_scale_init=self.embedding_scale_init, time_pool=self.time_pool,
                    linear=self.linear_path, linear_steps=self.linear_steps, linear_l2=self.linear_l2,
                    linear_inputs=self.linear_inputs, linear_trainable=self.linear_fit == "train",
                    apex_head_trainable=self.apex_fit == "train",
                    flow_width=self.flow_width, flow_backbone=self.flow_backbone, flow_init=self.flow_init,
                    flow_seq_repr=self.flow_seq_repr,
                    fusion=self.fusion, members=self.members, mirror_tta=self.mirror_tta,
                    flow_shift_tta=self.flow_shift_tta, flow_mixstyle=self.flow_mixstyle,
                    flow_kernel=self.flow_kernel, flow_layers=self.flow_layers,
                    flow_seq_mirror=self.flow_seq_mirror,
                    branch_dropout=self.branch_dropout, flow_sample_norm=self.flow_sample_norm,
                    head_weights=parse_head_weights(self.head_weights),
                    database_head_weights=parse_database_head_weights(self.database_head_weights),
                    au_heads=len(parse_au_vocab(self.au_vocab)) if self.au_loss > 0 else 0,
                    au_class_heads=self.au_class_heads,
                    adversary_heads=len(parse_domains(self.adversary_domains)) if self.adversary else 0)
