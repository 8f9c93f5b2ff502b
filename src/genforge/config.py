"""Typed, strict run configuration: YAML presets or files, plus dotted `key=value` overrides."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from genforge.data.images import MAX_SIDE
from genforge.data.series_options import SeriesOptions
from genforge.errors import GenforgeError
from genforge.models.catalogue import KINDS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AugmentConfig(_Strict):
    rotation: float = Field(0.0, ge=0, le=180)  # max rotation, degrees
    scale: float = Field(0.0, ge=0, lt=1)  # max relative zoom in or out
    translate: float = Field(0.0, ge=0, lt=1)  # max shift, fraction of the image side
    crop_padding: int = Field(0, ge=0)  # random crop after zero-padding by this many pixels
    flip: bool = False  # random horizontal flip (not for digits)


ImageSide = Annotated[int, Field(ge=1, le=MAX_SIDE)]  # pixels; predict and serve decode at most 4096 x 4096


class DataConfig(_Strict):
    name: str = "fashion-mnist"  # a dataset name: see `genforge data info --help`
    data_dir: str | None = None  # where to look for / download files; else GENFORGE_DATA or the cache
    val_fraction: float = Field(0.1, ge=0, lt=1)  # share of train held out for validation
    train_subset: int | None = Field(None, ge=1)  # use only the first N training images (quick runs)
    test_subset: int | None = Field(None, ge=1)  # score only the first N test images (quick runs; the test
    # figures are then not comparable with a whole test split's)
    classes: list[int | str] | None = Field(None, min_length=2)  # only these classes (indices or labels), train and
    # test alike, relabelled 0..k-1 in this order (classifiers)
    labels_per_class: int | None = Field(None, ge=1)  # keep N labelled training images per class (stratified, seeded);
    # the validation share (val_fraction) comes out of them too (classifiers)
    image_size: tuple[ImageSide, ImageSide] | None = None  # [H, W] pixels every imagefolder image is resized to
    # (bilinear, as predict and serve resize inputs); default: the most common size in the folder
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    series: SeriesOptions = Field(default_factory=SeriesOptions)  # series:NAME and csv-series:PATH: reading, cleaning

    @model_validator(mode="after")
    def _distinct_classes(self):
        if self.classes is not None and len({str(c) for c in self.classes}) < len(self.classes):
            raise ValueError(f"data.classes lists a class twice: {self.classes}")
        return self


class DistillConfig(_Strict):
    """Knowledge distillation (Hinton et al. 2015): a classifier also learns the softened outputs of a trained
    classifier of the same data. loss = (1 - weight) * CE + weight * T^2 * KL(teacher_T || student_T)."""

    teacher: str  # a run directory of a classifier trained on the same classes and inputs
    weight: float = Field(0.7, ge=0, le=1)  # share of the distillation term in the loss
    temperature: float = Field(4.0, gt=0)  # T: softens both distributions


class PrivacyConfig(_Strict):
    """train.privacy: DP-SGD with Opacus (genforge.train.privacy). Give epsilon (the budget), or noise_multiplier (and
    then epsilon, if given too, caps training)."""

    epsilon: float | None = Field(None, gt=0)  # the budget of the whole run, at delta
    noise_multiplier: float | None = Field(None, gt=0)  # noise std / max_grad_norm; default: the least for epsilon
    delta: float | None = Field(None, gt=0, lt=1)  # default: the largest power of ten below 1/N (1e-5 for 60,000)
    max_grad_norm: float = Field(1.0, gt=0)  # per-sample gradient clipping bound C
    accountant: Literal["prv", "rdp"] = "prv"  # prv (Gopi et al. 2021): tighter than RDP, so less noise per budget

    @model_validator(mode="after")
    def _budget_or_noise(self):
        if self.epsilon is None and self.noise_multiplier is None:
            raise ValueError("give train.privacy.epsilon (the budget) or train.privacy.noise_multiplier")
        return self


class TrainConfig(_Strict):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(256, ge=1)
    optimizer: Literal["adamw", "adam", "sgd", "adadelta"] = "adamw"
    lr: float = Field(1e-3, gt=0)  # peak learning rate (a GAN's generator)
    d_lr: float | None = Field(None, gt=0)  # a GAN's discriminator learning rate (TTUR); default: lr
    betas: tuple[float, float] = (0.9, 0.999)  # Adam/AdamW moment decays; GANs use (0.5, 0.999) or (0.0, 0.9)
    critic_steps: int = Field(1, ge=1)  # GAN: discriminator updates per generator update (5 for WGAN-GP)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD (Nesterov) only
    schedule: Literal["onecycle", "cosine", "step", "none"] = "onecycle"
    step_size: int = Field(1, ge=1)  # epochs between decays, schedule=step
    gamma: float = Field(0.7, gt=0, le=1)  # decay factor, schedule=step
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    distill: DistillConfig | None = None  # learn from a teacher run too (pruned classifiers are fine-tuned so)
    ema: float | None = Field(None, gt=0, lt=1)  # decay of an EMA of the weights; evaluated instead
    grad_clip: float | None = Field(None, gt=0)  # max global gradient norm
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast where the device has it
    channels_last: Literal["auto", "on", "off"] = "auto"
    device: str = "auto"  # auto picks cuda, then mps, then cpu
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; default: physical cores
    early_stopping: int | None = Field(None, ge=1)  # stop after N epochs without val improvement
    max_seconds: float | None = Field(None, gt=0)  # stop once training took this long (equal-time comparisons)
    checkpoint_every: int = Field(0, ge=0)  # steps between checkpoints; 0 = at each epoch end
    max_nonfinite: int = Field(5, ge=1)  # bad steps in a row (non-finite or unhealthy) before rolling back
    max_rollbacks: int = Field(3, ge=0)  # rollbacks before the run stops
    privacy: PrivacyConfig | None = None  # differentially private training (classifiers)
    init_from: str | None = None  # a classifier's run directory to start from (its weights; a new head if its classes
    # differ; its input normalization is kept)
    freeze: list[str] = Field(default_factory=list)  # parameter-name prefixes kept fixed (e.g. net.0), or `pretrained`:
    # every weight init_from loaded; frozen BatchNorm layers stay in eval mode (their statistics are kept too)
    unfreeze_epoch: int | None = Field(None, ge=2)  # from this epoch on (1-based) the frozen layers train too
    pretrained_lr_scale: float = Field(1.0, gt=0)  # learning rate of init_from's weights, as a share of lr


# one config class per registered kind, told apart by `kind`
ModelConfig = Annotated[Union[tuple(spec.config for spec in KINDS.values())], Field(discriminator="kind")]  # noqa: UP007


class EvalConfig(_Strict):
    """How generators are scored, at the end of training and by `genforge evaluate`."""

    samples: int = Field(10_000, ge=100)  # N generated images (and test images) per score
    seeds: int = Field(1, ge=1)  # sampling seeds; scores are reported as mean ± sd over them
    iwae_k: int = Field(1000, ge=1)  # VAE: importance samples per image for the NLL bound (Burda et al. 2016)
    iwae_images: int = Field(1000, ge=1)  # VAE: test images the NLL is estimated on
    grid: int = Field(64, ge=1)  # images in the sample grid written at each evaluation
    val_samples: int = Field(0, ge=0)  # after each epoch, FD of this many samples against as many validation images
    # (val_fd in metrics.jsonl; 0: off, as it costs a pass of the evaluator; genforge tune sets 1000 for GANs)


class MlflowSettings(_Strict):
    uri: str | None = None  # tracking URI; default sqlite:///RUNS/mlruns/mlflow.db (RUNS: the run directory's parent)
    experiment: str | None = None  # default: the config's name (runs of one recipe side by side)
    parent_run_id: str | None = None  # nest the run under this MLflow run (a tune study's trials)


class TensorboardSettings(_Strict):
    log_dir: str | None = None  # default RUNS/tensorboard; a run writes to LOG_DIR/<run directory name>


class TrackConfig(_Strict):
    """`track: [mlflow, tensorboard]` (or `--track mlflow,tensorboard`) mirrors the run into these trackers
    (genforge.track); the list is short for the mapping with default settings. The run directory stays the truth."""

    mlflow: MlflowSettings | None = None  # on when given
    tensorboard: TensorboardSettings | None = None  # on when given

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value):
        if value is None:
            return {}
        if isinstance(value, str):  # track=mlflow,tensorboard
            value = [name.strip() for name in value.split(",") if name.strip()]
        if isinstance(value, (list, tuple)):
            unknown = [name for name in value if name not in cls.model_fields]
            if unknown:
                raise ValueError(f"unknown tracker {unknown[0]!r}; trackers: {', '.join(cls.model_fields)}")
            return {name: {} for name in value}
        return value

    def names(self) -> list[str]:
        return [name for name in type(self).model_fields if getattr(self, name) is not None]


class RunConfig(_Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")  # prefix of the run directory
    seed: int = 0
    deterministic: bool = False  # deterministic algorithms (slower); needed for bit-exact resume on GPU
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=lambda: KINDS["fastcnn"].config())
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)  # experiment trackers: [mlflow, tensorboard]

    @model_validator(mode="after")
    def _transfer_applies(self):
        t, d = self.train, self.data
        used = [key for key, value in (("train.init_from", t.init_from), ("train.freeze", t.freeze),
                                       ("data.classes", d.classes), ("data.labels_per_class", d.labels_per_class))
                if value]
        if used and not KINDS[self.model.kind].transfer:
            raise ValueError(f"{used[0]} is for classifiers; model.kind={self.model.kind} cannot take it: remove it")
        if t.unfreeze_epoch is not None and not t.freeze:
            raise ValueError("train.unfreeze_epoch unfreezes what train.freeze froze: set train.freeze or remove it")
        if t.unfreeze_epoch is not None and t.unfreeze_epoch > t.epochs:
            raise ValueError(f"train.unfreeze_epoch={t.unfreeze_epoch} comes after the last epoch ({t.epochs}): "
                             f"lower it, or remove it to keep the layers frozen")
        if t.init_from is None and (t.pretrained_lr_scale != 1 or "pretrained" in t.freeze):
            key = "train.pretrained_lr_scale" if t.pretrained_lr_scale != 1 else "train.freeze=[pretrained]"
            raise ValueError(f"{key} is about the weights train.init_from loads: set train.init_from=RUN or remove it")
        if t.privacy is not None and t.unfreeze_epoch is not None:
            raise ValueError("train.privacy with train.unfreeze_epoch: Opacus records per-sample gradients only for "
                             "the layers trainable when training starts; remove train.unfreeze_epoch")
        return self

    @model_validator(mode="after")
    def _privacy_applies(self):
        if self.train.privacy is None:
            return self
        if not KINDS[self.model.kind].classifier:
            raise ValueError(f"train.privacy trains classifiers; model.kind={self.model.kind} cannot train privately "
                             f"(differentially private generators are not built yet): remove train.privacy or train a "
                             f"classifier")
        if getattr(self.model, "norm", None) == "batch":
            raise ValueError("train.privacy: BatchNorm mixes the samples of a batch, so per-sample clipping cannot "
                             "bound one sample's influence; set model.norm=group")
        if self.train.distill is not None:
            raise ValueError("train.privacy with train.distill: the teacher's outputs carry its own training data "
                             "unprotected; remove one of them")
        return self


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("genforge.presets").iterdir() if p.name.endswith(".yaml"))


def _read_source(source: str) -> dict:
    path = Path(source)
    if source.endswith((".yaml", ".yml")) or path.exists():
        if not path.is_file():
            raise GenforgeError(f"config file {source} not found")
        text = path.read_text()
    elif source in preset_names():
        text = resources.files("genforge.presets").joinpath(f"{source}.yaml").read_text()
    else:
        raise GenforgeError(
            f"unknown preset or config file '{source}'; presets: {', '.join(preset_names())}"
        )
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise GenforgeError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise GenforgeError(f"{source}: a config must be a YAML mapping")
    return raw


def apply_override(raw: dict, override: str) -> None:
    """Apply `a.b.c=value` to a nested dict; the value is parsed as YAML (3e-4, true, [64, 32]). Changing model.kind
    starts the model section from that kind's defaults: the preset's options of another kind do not apply to it."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise GenforgeError(f"override '{override}' must look like key=value, e.g. train.lr=3e-4")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise GenforgeError(f"override '{override}': '{part}' is not a section")
    parsed = yaml.safe_load(value) if value.strip() else None
    if key.strip() == "model.kind" and node.get("kind") not in (None, parsed):
        node.clear()
    node[leaf] = parsed


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if len(loc) > 1 and loc[0] == "model" and loc[1] in KINDS:  # drop the union's tag from the path
        del loc[1]
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}'"
    if first["type"] == "union_tag_invalid":
        return f"model.kind must be one of: {', '.join(KINDS)}"
    message = first["msg"].removeprefix("Value error, ")
    return f"config key '{key}': {message}" if key else message


def validate(raw: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise GenforgeError(_explain(e)) from None


def load_config(source: str, overrides: list[str] = ()) -> RunConfig:
    raw = _read_source(source)
    for override in overrides:
        apply_override(raw, override)
    return validate(raw)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
