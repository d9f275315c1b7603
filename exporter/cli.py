"""``patrol exporter``: serve the metrics of docs/metrics.md for a configuration.

    patrol exporter --config patrol.yaml --listen 0.0.0.0:9877
    patrol exporter --config patrol.yaml --once        # refresh once, print the exposition

The configuration is validated before anything starts (a token without sinks, a consumer in an
unknown cluster: rejected with the file, key and fix, exit 2). The refresher then runs in
background threads and the HTTP server in the main thread's event loop until SIGINT/SIGTERM.

``patrol/cli.py`` (the composition root) owns the top-level parser, reads the environment once
and adds the flags every command shares (``--config``, logging) through ``common``; the
environment reaches :func:`run` as ``args.env``, never from ``os.environ`` here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, BinaryIO, TextIO

from core.arenas import EXPORTER_ARENAS, cap_arenas, fix_mmap_threshold
from core.config import load_config
from core.errors import ConfigError, ListenError
from exporter.server import DEFAULT_PORT, make_app, parse_listen, start

if TYPE_CHECKING:
    from exporter.assembly import Exporter

log = logging.getLogger("patrol.exporter")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
SWITCH_INTERVAL = 0.001


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
               env: Mapping[str, str] | None = None,
               common: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.ArgumentParser:
    """Add ``exporter`` with its options; the handler is set as both ``handler`` and ``func``.

    ``common`` adds the shared flags (``--config``, logging); without it only ``--config`` is
    added here (default env ``PATROL_CONFIG``). ``env`` is stored as ``args.env`` for :func:`run`.
    """
    env = {} if env is None else env
    parser = subparsers.add_parser(
        "exporter", help="serve Prometheus metrics about PATs, KEDA, agent pools and pipelines",
        description="Serve /metrics, /healthz and /readyz. A background refresher reads every "
                    "source on its own interval; a scrape only reads memory.",
        epilog="examples:\n  patrol exporter --config patrol.yaml\n"
               "  patrol exporter --config patrol.yaml --listen 127.0.0.1:9877\n"
               "  patrol exporter --config patrol.yaml --once | promtool check metrics",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", metavar="HOST:PORT", default=env.get("PATROL_EXPORTER_LISTEN"),
                        help=f"address to serve on (default: exporter.listen from the config, "
                             f"else 0.0.0.0:{DEFAULT_PORT}; env PATROL_EXPORTER_LISTEN)")
    parser.add_argument("--once", action="store_true",
                        help="refresh every source once, print the exposition and exit")
    if common is not None:
        common(parser)
    else:
        parser.add_argument("--config", metavar="FILE", default=env.get("PATROL_CONFIG"),
                            help="patrol configuration file (env PATROL_CONFIG)")
    parser.set_defaults(handler=run, func=run, env=env)
    return parser


def run(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """Run the exporter until interrupted. Configuration errors propagate (the CLI exits 2).

    The environment (for credentials of kind ``environment``, Azure identity settings) is
    ``args.env`` as :func:`add_parser` stored it; ``env`` overrides it (tests). Neither given:
    an empty environment, never ``os.environ``.
    """
    if not args.config:
        raise ConfigError("(none)", "", "no configuration file given",
                          "pass --config FILE or set PATROL_CONFIG")
    cfg = load_config(args.config)
    try:
        host, port = parse_listen(args.listen or cfg.exporter.listen)
    except ValueError as exc:
        raise ConfigError(args.config, "exporter.listen", str(exc),
                          "write HOST:PORT, e.g. 0.0.0.0:9877") from None
    if env is None:
        env = getattr(args, "env", None) or {}
    # before any thread starts: a thread keeps the malloc arena it was first given (core/arenas.py)
    cap_arenas(env, EXPORTER_ARENAS)
    fix_mmap_threshold(env)
    # imported here: every patrol command builds this parser, and only the exporter needs the
    # sources and their clients (the worker and the CLI stay lighter for it)
    from exporter.assembly import CoreClients, build

    clients = CoreClients(cfg, env)
    exporter = build(cfg, clients, watch=not args.once, credentials=clients.credentials)
    try:
        if args.once:
            return once(exporter, sys.stdout.buffer, sys.stderr)
        # The refresher's threads parse JSON and render between scrapes; a shorter GIL switch
        # interval (default 5 ms) lets the event loop answer a scrape without queueing behind them.
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            # the refresher starts once the port is bound: a busy port is one line, not a
            # burst of source logs followed by an error
            asyncio.run(serve(exporter, host, port, started=lambda _port: exporter.start()))
        except OSError as exc:
            error = ListenError.from_os_error(exc, host, port, "--listen")
            if error is None:
                raise
            raise error from None
        return EXIT_OK
    finally:
        exporter.close()


def once(exporter: Exporter, out: BinaryIO, err: TextIO) -> int:
    """``--once``: refresh every source, print the exposition; exit 1 naming each source that is down.

    The exposition is printed either way (it says ``patrol_source_up 0`` for those sources), so
    ``--once | promtool check metrics`` still checks the format; the exit code is for scripts
    and CI that ask "can this configuration reach everything?".
    """
    exporter.refresher.refresh_once()
    out.write(exporter.exposition.body())
    out.flush()
    down = [source for source in exporter.sources if not source.health.up]
    for source in down:
        print(f"patrol exporter: source {source.name} is down: {source.health.reason or 'no answer'}",
              file=err)
    return EXIT_FAILURE if down else EXIT_OK


async def serve(exporter: Exporter, host: str, port: int, stop: asyncio.Event | None = None,
                started: Callable[[int], None] | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when run from the command line).

    ``started(port)`` runs once the address is bound, before any request is answered.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    runner = None
    try:
        runner, bound = await start(make_app(exporter.exposition, lambda: exporter.refresher.pending),
                                    host, port)
        log.info("exporter serving on http://%s:%d/metrics", host, bound, extra={"port": bound})
        if started is not None:
            started(bound)
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if runner is not None:
            await runner.cleanup()
