"""Checkpoints: written atomically (free space checked, temp file + rename), loaded with a
clear error for anything that is not a complete heartvec checkpoint.

A checkpoint carries the model config and class names, so loading needs nothing else.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from heartvec.errors import InputError, StorageError
from heartvec.model.config import ModelConfig
from heartvec.model.vecset import VecSetAutoencoder

FORMAT = "heartvec-checkpoint-1"


class CheckpointError(InputError):
    """A checkpoint file is missing, truncated, corrupt or not heartvec's."""


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` so that `path` always holds a complete checkpoint.

    Raises:
        StorageError: the disk lacks room for it (the previous checkpoint is left untouched).
    """
    needed = int(1.1 * _tensor_bytes(payload)) + (1 << 20)
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise StorageError(f"{path}: {free:,} bytes free, need about {needed:,}; not saved")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as e:
        raise StorageError(f"{path}: could not write the checkpoint ({e}); not saved") from e
    finally:
        temporary.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`.

    Raises:
        CheckpointError: missing, truncated, corrupt, or not a heartvec checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(path, f"truncated or corrupt checkpoint ({e})") from e
    except Exception as e:  # torch's unpickler raises several types for foreign files
        raise CheckpointError(path, f"not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(path, f"not a heartvec checkpoint (expected format {FORMAT})")
    for key in ("model_config", "class_names", "model"):
        if key not in payload:
            raise CheckpointError(path, f"checkpoint lacks '{key}'")
    return payload


def model_from_checkpoint(payload: dict[str, Any]) -> VecSetAutoencoder:
    """Rebuild the model a checkpoint describes and load its weights."""
    model = VecSetAutoencoder(ModelConfig(**payload["model_config"]))
    model.load_state_dict(payload["model"])  # float16 weights of an export become float32
    return model


def level_offsets_of(payload: dict[str, Any]) -> dict[str, float]:
    """How far `heartvec export-checkpoint --level-offset` moved each class's zero level (0 for
    a checkpoint as trained; exports before per-class offsets kept one number for all)."""
    recorded = payload.get("level_offset", 0.0)
    if isinstance(recorded, dict):
        return {name: float(recorded.get(name, 0.0)) for name in payload["class_names"]}
    return dict.fromkeys(payload["class_names"], float(recorded))


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file (a checkpoint's identity in reports)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
