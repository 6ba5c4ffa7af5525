"""`heartvec serve [--host H] [--port P] [--embedded]`: the HTTP API."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import uvicorn

from heartvec.settings import Settings
from heartvec_api.app import create_app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartvec serve",
        description="Serve the HTTP API (OpenAPI at /openapi.json). Settings come from HEARTVEC_* "
        "environment variables (database, broker, storage folder, API key, limits).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="run jobs in this process, with SQLite in the storage folder (unless "
        "HEARTVEC_DATABASE_URL is set): no Postgres, Redis or separate worker needed",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(Settings(), embedded=args.embedded)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
