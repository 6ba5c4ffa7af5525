"""`heartvec worker`: a Celery worker for reconstruction jobs (run one per GPU)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from heartvec.jobs.database import make_engine, migrate
from heartvec.jobs.queue import QUEUE
from heartvec.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartvec worker",
        description="Run reconstruction jobs from the broker, one at a time (start one worker "
        "per GPU, e.g. with CUDA_VISIBLE_DEVICES). Settings come from HEARTVEC_* environment "
        "variables; HEARTVEC_DEVICE picks the device (auto: CUDA when present).",
    )
    parser.add_argument(
        "--hostname", default="heartvec@%h", help="Celery node name (default heartvec@%%h)"
    )
    parser.add_argument("--loglevel", default="INFO", help="INFO, DEBUG, WARNING (default INFO)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    engine = make_engine(settings.database_url)
    migrate(engine)
    engine.dispose()
    os.environ.setdefault("MPLBACKEND", "Agg")
    from heartvec_worker.app import celery_app  # after migrating: the app reads the settings

    celery_app.worker_main(
        [
            "worker",
            "--pool=prefork",
            "--concurrency=1",
            "--prefetch-multiplier=1",
            "--optimization=fair",
            "--without-gossip",
            "--without-mingle",
            f"--queues={QUEUE}",
            f"--hostname={args.hostname}",
            f"--loglevel={args.loglevel}",
        ]
    )
    return 0
