"""Settings read from the environment (prefix HEARTVEC_), at the edges only: the command line and
the services read them once and pass values inward."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_CHECKPOINT = Path(__file__).parent / "checkpoints" / "heartvec-small.pt"
"""The checkpoint shipped with the package (the `small` preset trained on phantoms)."""


class Settings(BaseSettings):
    """Args:
    checkpoint: model checkpoint used when a command or job names none
        (HEARTVEC_CHECKPOINT; default: the bundled one).
    """

    model_config = SettingsConfigDict(env_prefix="HEARTVEC_")

    checkpoint: Path = BUNDLED_CHECKPOINT


def default_checkpoint() -> Path:
    """$HEARTVEC_CHECKPOINT, else the bundled checkpoint."""
    return Settings().checkpoint
