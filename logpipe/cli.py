"""Command line: argument parsing, logging set-up and ROLE dispatch.

The composition root: the only module that picks implementations for the roles, and the only
importer of `logpipe.dev` (the local stack, the bench, and what LOGPIPE_NAIVE / LOGPIPE_FAULTS
swap in for bench and chaos runs).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeAlias

import orjson

from logpipe import __version__
from logpipe.config import Settings
from logpipe.errors import ConfigError
from logpipe.lifecycle import run_async

ROLES = ("ingestor", "processor", "emitter", "console")
LOCAL_STACK = "local"
# Flags that set a Settings field: validated exactly as the variable they stand for. They take
# the text as typed (no argparse `type` or `choices`), so a bad value gets the variable's message.
FLAG_VARIABLES = {
    "port": ("--port", "LOGPIPE_PORT"),
    "emitter_service": ("--service", "LOGPIPE_EMITTER_SERVICE"),
    "emitter_rate": ("--rate", "LOGPIPE_EMITTER_RATE"),
    "emitter_events": ("--events", "LOGPIPE_EMITTER_EVENTS"),
    "ingestor_url": ("--url", "LOGPIPE_INGESTOR_URL"),
}
DEV_VARIABLES = ("LOGPIPE_NAIVE", "LOGPIPE_FAULTS")
QUIET_LOGGERS = ("botocore", "aiobotocore", "aioboto3", "werkzeug", "urllib3", "uvicorn.access")


# What every LogRecord carries; anything else came from `extra=` and goes under "context".
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, role, logger, message, context (from `extra=`)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "role": self._role,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS}
        if context:
            doc["context"] = context
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


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
    _add_up(commands)
    _add_ingestor(commands)
    commands.add_parser("processor", help="drain SQS into DynamoDB")
    _add_emitter(commands)
    commands.add_parser("bootstrap", help="create the queue, DLQ and table (idempotent)")
    _add_dlq(commands)
    _add_bench(commands)
    _add_console(commands)
    _add_query(commands)
    _add_export(commands)
    return parser


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_up(commands: Commands) -> None:
    up = commands.add_parser(
        "up", help="run the whole pipeline locally on an embedded AWS endpoint"
    )
    up.add_argument("--events", type=int, help="stop the emitters after N events, verify, exit")
    up.add_argument("--rate", type=float, help="events per second per emitter (0 = unthrottled)")
    up.add_argument("--port", help="the ingestor's port on localhost (8080)")
    up.add_argument("--console-port", type=int, default=8081, help="the console's port (8081)")
    up.add_argument("--aws-port", type=int, default=8082, help="the embedded AWS endpoint (8082)")


def _add_ingestor(commands: Commands) -> None:
    ingestor = commands.add_parser("ingestor", help="serve POST /ingest")
    ingestor.add_argument("--port", help="HTTP port (LOGPIPE_PORT)")


def _add_emitter(commands: Commands) -> None:
    emitter = commands.add_parser("emitter", help="simulate service-a or service-b")
    emitter.add_argument(
        "--service",
        dest="emitter_service",
        metavar="{service-a,service-b}",
        help="the service to simulate (LOGPIPE_EMITTER_SERVICE)",
    )
    emitter.add_argument("--rate", dest="emitter_rate", help="events per second")
    emitter.add_argument("--events", dest="emitter_events", help="stop after N events")
    emitter.add_argument("--url", dest="ingestor_url", help="ingestor URL (LOGPIPE_INGESTOR_URL)")


def _add_dlq(commands: Commands) -> None:
    dlq = commands.add_parser("dlq", help="inspect or redrive dead-lettered messages")
    dlq.add_argument("action", choices=("inspect", "redrive"))
    dlq.add_argument("--sample", type=int, default=10, help="inspect: messages to show")
    dlq.add_argument(
        "--all",
        action="store_true",
        help="redrive: move refused events and undecodable messages too",
    )
    dlq.add_argument("--json", action="store_true", help="print JSON")


def _add_bench(commands: Commands) -> None:
    bench = commands.add_parser("bench", help="load-test end to end; prints one JSON object")
    bench.add_argument("--events", type=int, help="events to drive (20000; naive 500)")
    bench.add_argument(
        "--event-bytes",
        type=_event_bytes,
        default=1024,
        metavar="N",
        help="about how long each event's JSON is as sent (1024; 200-16384)",
    )
    bench.add_argument(
        "--seed", type=int, help="seed of the events' random content (default: one per run)"
    )
    bench.add_argument(
        "--pitr",
        action="store_true",
        help="price point-in-time recovery in usd_per_million_events_all_in (as deployed)",
    )
    bench.add_argument("--naive", action="store_true", help="the one-call-per-event pipeline")
    bench.add_argument("--ceiling", action="store_true", help="the endpoint alone, no pipeline")
    bench.add_argument("--concurrency", type=int, default=16, help="concurrent HTTP clients")
    bench.add_argument(
        "--endpoint",
        nargs="?",
        const=LOCAL_STACK,
        help="AWS endpoint to use (default: start moto's server); alone: the running `logpipe up`",
    )
    bench.add_argument("--rate", type=float, default=0.0, help="events/s to drive (0 = max)")
    bench.add_argument("--chaos", default="", help="faults, e.g. kill-processor:3,sqs-error:0.1")
    bench.add_argument("--profile", metavar="DIR", help="py-spy profile of each role into DIR")
    bench.add_argument(
        "--closing-endpoint",
        action="store_true",
        help="moto's own server, which closes every connection (default: keep-alive, as AWS)",
    )


def _event_bytes(text: str) -> int:
    from logpipe.dev.events import MAX_EVENT_BYTES, MIN_EVENT_BYTES

    try:
        value = int(text)
    except ValueError:
        value = 0
    if not MIN_EVENT_BYTES <= value <= MAX_EVENT_BYTES:
        raise argparse.ArgumentTypeError(
            f"must be an integer {MIN_EVENT_BYTES}-{MAX_EVENT_BYTES}, got {text!r}"
        )
    return value


def _add_console(commands: Commands) -> None:
    console = commands.add_parser("console", help="serve the read API and the web page")
    console.add_argument("--port", help="HTTP port (LOGPIPE_PORT)")


def _add_query(commands: Commands) -> None:
    query = commands.add_parser(
        "query",
        help="read stored events, newest first",
        description="Read stored events, newest first. With LOGPIPE_CONSOLE_URL (and "
        "LOGPIPE_READ_KEY) set, through that console's API: no AWS settings needed.",
    )
    query.add_argument(
        "--service",
        action="append",
        metavar="S",
        help="a service to read (repeatable; default: all seen)",
    )
    query.add_argument(
        "--since", metavar="T", help="start: 15m, 6h, 2d back from now or RFC 3339 (15m)"
    )
    query.add_argument(
        "--until", metavar="T", help="end: a duration back from now or RFC 3339 (now)"
    )
    query.add_argument(
        "--level",
        action="append",
        metavar="L",
        help="only this level (repeatable): trace debug info warn error fatal",
    )
    query.add_argument(
        "--trace-id", metavar="ID", help="only the events of this trace, across services"
    )
    query.add_argument(
        "--where",
        action="append",
        metavar="KEY=VALUE",
        help="only events whose attribute KEY is exactly VALUE (repeatable: all must hold)",
    )
    query.add_argument(
        "-q", "--grep", metavar="TEXT", help="only events whose message contains TEXT (any case)"
    )
    query.add_argument("--limit", type=int, metavar="N", help="at most N events, 1-1000 (100)")
    query.add_argument("--json", action="store_true", help="one JSON object per line")
    query.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then print new events as they are stored, until Ctrl-C",
    )


def _add_export(commands: Commands) -> None:
    export = commands.add_parser("export", help="every stored event of a range once, as NDJSON")
    export.add_argument(
        "--service", action="append", help="a service to export (repeatable; default: all seen)"
    )
    export.add_argument("--since", default="30d", help="start: 30d back from now or RFC 3339")
    export.add_argument("--until", default="now", help="end: a duration back or RFC 3339 (now)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or os.environ.get("ROLE", "").strip().lower()
    if not command:
        parser.print_help(sys.stderr)
        return 2
    if not args.command and command not in ROLES:
        print(f"logpipe: ROLE must be one of {', '.join(ROLES)}, got {command!r}", file=sys.stderr)
        return 2
    try:
        settings = settings_from(os.environ, args)
        parts = collaborators(command, os.environ)
        setup_logging(command, settings.python_log_level)
        if command in ("query", "export", "dlq", "bench"):
            settings = _local_stack(settings, args)
        return run_async(_dispatch(command, settings, args, parts))
    except ConfigError as exc:
        print(f"logpipe: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def settings_from(env: Mapping[str, str], args: argparse.Namespace) -> Settings:
    """Settings from the environment with the flags given, each checked as its variable is."""
    given = {
        variable: str(value)
        for dest, (_, variable) in FLAG_VARIABLES.items()
        if (value := getattr(args, dest, None)) is not None
    }
    try:
        return Settings.from_env({**env, **given})
    except ConfigError as exc:
        message = str(exc)
        for flag, variable in FLAG_VARIABLES.values():
            if variable in given and message.startswith(variable):
                raise ConfigError(flag + message.removeprefix(variable)) from None
        raise


def collaborators(role: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The parts LOGPIPE_NAIVE / LOGPIPE_FAULTS swap into `role`; none when both are unset."""
    if not any(env.get(name, "").strip() for name in DEV_VARIABLES):
        return {}
    from logpipe.dev.switches import Switches

    return Switches.from_env(env).collaborators(role)


def _local_stack(settings: Settings, args: argparse.Namespace) -> Settings:
    """Point query/dlq (and `bench --endpoint`) at a running `logpipe up` when AWS is not set up."""
    from pathlib import Path

    from logpipe.dev import local

    if args.command == "bench" and args.endpoint != LOCAL_STACK:
        return settings
    if args.command == "query" and settings.console_url:
        return settings  # read through the console: AWS is not asked at all
    attached = local.attach(settings, os.environ, Path.cwd(), Path.home(), sys.stderr)
    if args.command == "bench":
        if attached is None:
            raise ConfigError(
                "bench --endpoint: no `logpipe up` runs from this directory "
                "(or AWS settings are present); give the endpoint's URL"
            )
        args.endpoint = attached.endpoint_url
        return settings
    return attached or settings


async def _dispatch(
    command: str, settings: Settings, args: argparse.Namespace, parts: dict[str, Any]
) -> int:
    return await HANDLERS[command](settings, args, parts)


# Each command's handler imports its role lazily: a process loads only the role it runs.
Handler: TypeAlias = Callable[[Settings, argparse.Namespace, dict[str, Any]], Awaitable[int]]


async def _ingestor(settings: Settings, args: argparse.Namespace, parts: dict[str, Any]) -> int:
    from logpipe.ingest import app as ingestor

    return await ingestor.serve(settings, **parts)


async def _processor(settings: Settings, args: argparse.Namespace, parts: dict[str, Any]) -> int:
    from logpipe.process import processor

    return await processor.serve(settings, **parts)


async def _emitter(settings: Settings, args: argparse.Namespace, parts: dict[str, Any]) -> int:
    from logpipe import emitter

    return await emitter.serve(settings)


async def _console(settings: Settings, args: argparse.Namespace, parts: dict[str, Any]) -> int:
    from logpipe.read import console

    return await console.serve(settings)


async def _query(settings: Settings, args: argparse.Namespace, parts: dict[str, Any]) -> int:
    from logpipe.read import query_cli

    pairs = query_cli.query_pairs(args)
    return await query_cli.query_command(settings, pairs, args.json, follow=args.follow)


async def _export(settings: Settings, args: argparse.Namespace, parts: dict[str, Any]) -> int:
    from logpipe.read import export

    return await export.export_command(settings, args.service or [], args.since, args.until)


async def _bench(settings: Settings, args: argparse.Namespace, parts: dict[str, Any]) -> int:
    from logpipe.dev import bench
    from logpipe.dev.faults import Faults

    options = bench.BenchOptions(
        events=args.events or (500 if args.naive else 20000),
        naive=args.naive,
        ceiling=args.ceiling,
        concurrency=args.concurrency,
        endpoint=args.endpoint,
        rate=args.rate,
        chaos=Faults.parse(args.chaos),
        profile=args.profile,
        keepalive=not args.closing_endpoint,
        event_bytes=args.event_bytes,
        seed=args.seed,
        pitr=args.pitr,
    )
    result = await bench.run(settings, options)
    print(orjson.dumps(result).decode(), flush=True)
    clean = result["lost"] == 0 and result["duplicates"] == 0
    return 0 if clean and result.get("poison_in_dlq", 0) == options.chaos.poison else 1


async def _dlq(settings: Settings, args: argparse.Namespace, parts: dict[str, Any]) -> int:
    from logpipe.process import dlq

    report = await dlq.run(settings, args.action, sample=args.sample, everything=args.all)
    if args.json:
        print(orjson.dumps(report).decode())
    elif args.action == "inspect":
        print(dlq.render_inspection(report))
    else:
        print(dlq.render_redrive(report, settings))
    return 0


async def _bootstrap(settings: Settings, args: argparse.Namespace, parts: dict[str, Any]) -> int:
    from logpipe.aws import bootstrap as aws

    print(orjson.dumps(await aws.bootstrap_endpoint(settings)).decode())
    return 0


async def _up(settings: Settings, args: argparse.Namespace, parts: dict[str, Any]) -> int:
    from logpipe.dev import local

    return await local.up(
        settings,
        events=args.events,
        rate=args.rate,
        console_port=args.console_port,
        aws_port=args.aws_port,
    )


HANDLERS: dict[str, Handler] = {
    "ingestor": _ingestor,
    "processor": _processor,
    "emitter": _emitter,
    "console": _console,
    "query": _query,
    "export": _export,
    "bench": _bench,
    "dlq": _dlq,
    "bootstrap": _bootstrap,
    "up": _up,
}
