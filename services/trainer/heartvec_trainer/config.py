"""Training settings and named presets (model + training), overridable by a YAML file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from heartvec.errors import InputError
from heartvec.model.config import MODEL_PRESETS, ModelConfig


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Args:
        epochs: passes over the training split.
        batch_size: shapes per step and per process.
        accumulation: steps whose gradients add up before an optimizer step (effective batch =
            batch_size x accumulation x world size).
        learning_rate: peak AdamW learning rate, reached after `warmup_steps`, then cosine decay
            to `learning_rate * min_lr_ratio`.
        vol_points / near_points / surface_points: query points per shape and step (volume
            points half inside, half outside any class; surface points evenly per class).
        near_balance: the share of near points drawn evenly over the classes (by nearest
            surface) instead of in proportion to surface area, where thin veins get few.
        eikonal_points: near points per shape where the eikonal term is evaluated.
        eikonal_step: central-difference step, normalized units.
        truncation: SDF targets clamped to +-truncation and divided by it (None: raw SDF).
        weight_*: loss weights.
        sign_temperature: the sign term's occupancy is sigmoid(-prediction / sign_temperature)
            (prediction in target units: +-1 at the truncation distance).
        augment: random similarity transform per shape and step (off by default: hearts come
            anatomically aligned); `augment_rotation_deg` and `augment_scale` bound it, and
            `augment_shift` adds a translation of up to that much per axis (normalized units:
            0.05 is 5 mm at the default 100 mm scale), so that the model does not tie a shape
            to where the frame's centre (the centre of the input's box) falls on it.
        val_every: validate every N epochs (0: never).
        repeats: passes over the training split per epoch, each with its own shuffle and point
            draws. For a small split on a fast GPU: a batch is built by one DataLoader worker,
            so an epoch of few batches keeps few workers busy; repeats fill them all.
        checkpoint_every_s: save RUN_DIR/checkpoint-last.pt at most this often (0: after every
            epoch); validated and final epochs are always saved. For epochs of a second or two.
        time_limit_s: stop after this many seconds of training (resumed runs count their
            earlier time), validating and saving first; the learning rate then follows the
            cosine by whichever is further along, steps or time, so a run cut by its time limit
            still ends at the low learning rate. For fixed GPU leases and SLURM wall times.
        precision: 'auto' (bf16 autocast on GPU, fp32 on CPU), 'fp32' or 'bf16'.
        workers: DataLoader worker processes.
        cache_mb: prepared files kept in memory once read, per process (the main one and each
            worker), in MiB; files past it are read again each time (0: none kept).
        seed: seeds model initialisation and every random draw of the data.
    """

    epochs: int = 100
    batch_size: int = 8
    accumulation: int = 1
    learning_rate: float = 3e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    warmup_steps: int = 200
    grad_clip: float = 1.0
    vol_points: int = 2048
    near_points: int = 2048
    surface_points: int = 1024
    near_balance: float = 0.0
    eikonal_points: int = 256
    eikonal_step: float = 0.005
    truncation: float | None = 0.1
    weight_vol: float = 1.0
    weight_near: float = 10.0
    weight_surface: float = 10.0
    weight_eikonal: float = 0.001
    weight_sign: float = 0.0
    sign_temperature: float = 0.1
    augment: bool = False
    augment_rotation_deg: float = 10.0
    augment_scale: float = 0.1
    augment_shift: float = 0.0
    val_every: int = 1
    time_limit_s: float | None = None
    repeats: int = 1
    checkpoint_every_s: float = 0.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    workers: int = 2
    cache_mb: float = 1024.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.checkpoint_every_s < 0 or self.cache_mb < 0:
            raise InputError(
                "train config", "repeats must be >= 1, checkpoint_every_s and cache_mb >= 0"
            )
        if min(self.augment_rotation_deg, self.augment_scale, self.augment_shift) < 0:
            raise InputError("train config", "augment_rotation_deg, _scale, _shift must be >= 0")
        if not 0.0 <= self.near_balance <= 1.0:
            raise InputError("train config", f"near_balance {self.near_balance}: must be 0..1")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise InputError("train config", f"time limit {self.time_limit_s} s: must be > 0")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(
        batch_size=2,
        vol_points=1024,
        near_points=1024,
        surface_points=512,
        warmup_steps=20,
        learning_rate=1e-3,
        workers=0,
    ),
    "small": TrainConfig(),
    "base": TrainConfig(batch_size=64, learning_rate=1e-4, warmup_steps=1000),
}


def _updated(config: Any, overrides: dict[str, Any], source: str, section: str) -> Any:
    known = {f.name for f in fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(source, f"unknown {section} settings {unknown}; known: {sorted(known)}")
    return replace(config, **overrides)


def load_config(name_or_yaml: str) -> tuple[str, ModelConfig, TrainConfig]:
    """A preset by name, or a YAML file `{preset: NAME, model: {...}, train: {...}}`.

    Returns:
        (preset name, model config, train config).
    """
    if name_or_yaml in MODEL_PRESETS:
        return name_or_yaml, MODEL_PRESETS[name_or_yaml], TRAIN_PRESETS[name_or_yaml]
    path = Path(name_or_yaml)
    if not path.is_file():
        raise InputError(
            name_or_yaml, f"not a config: expected one of {sorted(MODEL_PRESETS)} or a YAML file"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(path, f"cannot read config: {e}") from e
    if not isinstance(raw, dict) or set(raw) - {"preset", "model", "train"}:
        raise InputError(path, "expected a mapping with keys preset, model, train")
    preset = raw.get("preset", "small")
    if preset not in MODEL_PRESETS:
        raise InputError(
            path, f"unknown preset {preset!r}: expected one of {sorted(MODEL_PRESETS)}"
        )
    model = _updated(MODEL_PRESETS[preset], raw.get("model") or {}, str(path), "model")
    train = _updated(TRAIN_PRESETS[preset], raw.get("train") or {}, str(path), "train")
    return preset, model, train
