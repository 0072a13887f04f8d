"""Command line: argument parsing, logging set-up and ROLE dispatch."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

from logpipe import __version__
from logpipe.config import Settings
from logpipe.errors import ConfigError
from logpipe.lifecycle import run_async

ROLES = ("ingestor", "processor", "emitter")
QUIET_LOGGERS = ("botocore", "aiobotocore", "aioboto3", "werkzeug", "urllib3", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, role, logger, message (and error, if any)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "role": self._role,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup_logging(role: str, level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logpipe",
        description="Log pipeline: HTTP ingest -> SQS -> DynamoDB. "
        "Without a command, runs the role named by $ROLE.",
    )
    parser.add_argument("--version", action="version", version=f"logpipe {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command")

    up = commands.add_parser(
        "up", help="run the whole pipeline locally on an embedded AWS endpoint"
    )
    up.add_argument("--events", type=int, help="stop the emitters after N events, verify, exit")
    up.add_argument("--rate", type=float, help="events per second per emitter (0 = unthrottled)")

    ingestor = commands.add_parser("ingestor", help="serve POST /ingest")
    ingestor.add_argument("--port", type=int, help="HTTP port (LOGPIPE_PORT)")

    commands.add_parser("processor", help="drain SQS into DynamoDB")

    emitter = commands.add_parser("emitter", help="simulate service-a or service-b")
    emitter.add_argument("--service", dest="emitter_service", choices=("service-a", "service-b"))
    emitter.add_argument("--rate", dest="emitter_rate", type=float, help="events per second")
    emitter.add_argument("--events", dest="emitter_events", type=int, help="stop after N events")
    emitter.add_argument("--url", dest="ingestor_url", help="ingestor URL (LOGPIPE_INGESTOR_URL)")

    commands.add_parser("bootstrap", help="create the queue, DLQ and table (idempotent)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or os.environ.get("ROLE", "").strip().lower()
    if not command:
        parser.print_help(sys.stderr)
        return 2
    if command not in (*ROLES, "up", "bootstrap"):
        print(f"logpipe: ROLE must be one of {', '.join(ROLES)}, got {command!r}", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env(os.environ).with_overrides(**vars(args))
        setup_logging(command, settings.python_log_level)
        return run_async(_dispatch(command, settings, args))
    except ConfigError as exc:
        print(f"logpipe: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _dispatch(command: str, settings: Settings, args: argparse.Namespace) -> int:
    if command == "ingestor":
        from logpipe import ingestor

        return await ingestor.serve(settings)
    if command == "processor":
        from logpipe import processor

        return await processor.serve(settings)
    if command == "emitter":
        from logpipe import emitter

        return await emitter.serve(settings)
    if command == "bootstrap":
        from logpipe import aws

        print(orjson.dumps(await aws.bootstrap_endpoint(settings)).decode())
        return 0
    from logpipe import local

    return await local.up(settings, events=args.events, rate=args.rate)
