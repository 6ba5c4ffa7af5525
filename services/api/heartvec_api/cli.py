"""`heartvec serve [--host H] [--port P] [--embedded]`: the HTTP API."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import uvicorn

from heartvec.logs import configure_logging
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
    settings = Settings()
    configure_logging(settings.log_format == "json")
    app = create_app(settings, embedded=args.embedded)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=True)
    return 0
