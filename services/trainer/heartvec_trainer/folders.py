"""Output folders of `prepare` and `train`, made or refused with a message a user can act on."""

from __future__ import annotations

import os
from pathlib import Path

from heartvec.errors import InputError


def output_folder(path: Path) -> Path:
    """Make `path` (and its parents) if missing; refuse one this process cannot write.

    The usual cause in containers: a bind-mounted folder that did not exist was created by the
    Docker daemon as root, and the image's user (uid 1000) cannot write it.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except PermissionError as e:
        raise InputError(path, f"cannot create it ({e.strerror})") from e
    if not os.access(path, os.W_OK | os.X_OK):
        owner = path.stat().st_uid
        raise InputError(
            path,
            f"not writable by uid {os.getuid()} (owned by uid {owner}); create it as the user "
            "who runs this (mkdir) before a container mounts it, or change its owner",
        )
    return path
