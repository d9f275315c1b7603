"""The ``patrol`` command line: the composition root.

It reads the environment (in this one place), parses flags, loads the configuration, configures
logging once, and hands over to a service. Settings precedence: flag > environment > config file.
Exit codes: 0 ok, 1 failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from core import logs
from core.build import build_info
from core.config import Config, load_config
from core.errors import ConfigError, ListenError, PatrolError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; an option's default shown only when it says something.

    argparse's ArgumentDefaultsHelpFormatter appends "(default: None)" to every option without
    one and a second "(default: ...)" to help that already explains its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        says_default = "default:" in text or "(default" in text
        nothing_to_say = action.required or action.default in (None, False, argparse.SUPPRESS)
        positional = not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
        if says_default or nothing_to_say or positional:
            return text
        return f"{text} (default: %(default)s)"


class _VersionAction(argparse.Action):
    """``--version``: computed only when asked (it may run git), unlike argparse's own action."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help='print "patrol VERSION (REVISION, Python X.Y.Z)" and exit')

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> NoReturn:
        print(build_info().describe())
        parser.exit(EXIT_OK)


# Commands that print their own progress for a person: their logs default to warnings only.
_INTERACTIVE = frozenset({"rotate", "history", "check", "example", "login", "adopt"})


def _common(parser: argparse.ArgumentParser, env: Mapping[str, str], *, config: bool = True) -> None:
    if config:
        parser.add_argument(
            "--config", metavar="FILE", default=env.get("PATROL_CONFIG"),
            help="patrol configuration file (env PATROL_CONFIG)",
        )
    parser.add_argument(
        "--log-format", choices=["text", "json"], default=env.get("PATROL_LOG_FORMAT", "text"),
        help="log output format (env PATROL_LOG_FORMAT)")
    quiet = parser.prog.rsplit(" ", 1)[-1] in _INTERACTIVE
    parser.add_argument(
        "--log-level", default=env.get("PATROL_LOG_LEVEL", "WARNING" if quiet else "INFO"),
        help="log level (env PATROL_LOG_LEVEL)")


def _seconds(text: str) -> float:
    """A positive number of seconds (argparse turns the ValueError into one usage line, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (e.g. 90)") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds (e.g. 90)")
    return value


def _sub(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str,
         epilog: str, handler: Handler) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_, epilog=epilog, formatter_class=_Formatter)
    p.set_defaults(handler=handler)
    return p


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patrol",
        description="patrol watches the Azure DevOps PATs that keep self-hosted agents alive, "
                    "warns before they expire, and rotates them when an alert fires.",
        epilog="examples:\n"
               "  patrol config check patrol.yaml\n"
               "  patrol exporter --config patrol.yaml --listen 0.0.0.0:9877\n"
               "  patrol worker --config patrol.yaml --listen 0.0.0.0:9878\n"
               "  patrol rotate keda --config patrol.yaml --dry-run\n"
               "  patrol adopt keda --config patrol.yaml --dry-run\n"
               "  patrol sandbox --ready-file /tmp/sandbox.json\n"
               "  patrol demo\n\n"
               "exit codes: 0 ok, 1 failure, 2 usage or configuration error",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # config
    cfg = sub.add_parser("config", help="check or explain a configuration file",
                         description="Check or explain a configuration file.")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = _sub(cfg_sub, "check", "validate a configuration file and summarise it",
                 "examples:\n  patrol config check patrol.yaml\n"
                 "  PATROL_CONFIG=patrol.yaml patrol config check\n"
                 "  patrol config check patrol.yaml --json | jq '.problems[]'",
                 _run_config_check)
    check.set_defaults(config_command="check")
    check.add_argument("file", nargs="?", default=None, help="the file (default: --config / PATROL_CONFIG)")
    check.add_argument("--json", action="store_true",
                       help="print one JSON document on stdout: valid, problems (file, line, path, "
                            "problem, fix), summary")
    _common(check, env)
    example = _sub(cfg_sub, "example", "print a fully commented example configuration",
                   "examples:\n  patrol config example > patrol.yaml", _run_config_check)
    example.set_defaults(file=None, config=None, config_command="example")
    schema = _sub(cfg_sub, "schema", "print the JSON Schema of the configuration file (for editors)",
                  "examples:\n  patrol config schema > patrol.schema.json\n"
                  "  (patrol config example starts with the line naming the published schema)",
                  _run_config_check)
    schema.set_defaults(file=None, config=None, config_command="schema")

    def _config_help(_args: argparse.Namespace) -> int:
        cfg.print_help()
        return EXIT_USAGE

    cfg.set_defaults(handler=_config_help)

    # sandbox
    sb = _sub(sub, "sandbox", "run the simulated Azure DevOps/Entra/Key Vault/Kubernetes/KEDA world",
              "The ready file is written once every endpoint answers; it names a generated patrol\n"
              "config wired to the sandbox. See docs/sandbox.md.\n\nexamples:\n"
              "  patrol sandbox --ready-file /tmp/sandbox.json\n"
              "  patrol sandbox --ready-file /tmp/sb.json --scenario large --duration 600",
              _run_sandbox)
    sb.add_argument("--ready-file", required=True, metavar="PATH", help="where to write the ready JSON")
    sb.add_argument("--scenario", default="default",
                    help="scenario: default, large, unadopted or soak (docs/sandbox.md)")
    sb.add_argument("--dir", default=None, metavar="DIR", help="working directory (default: a new temp dir)")
    sb.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                    help="stop after this long (default: until Ctrl-C)")
    _common(sb, env, config=False)

    # demo
    demo = _sub(sub, "demo", "start the sandbox and watch patrol keep the agents alive",
                "Prints the URLs to open, then a timeline: each event as it happens (the incident, KEDA's\n"
                "first failed poll, alerts firing and resolving, each rotation step with its duration, the\n"
                "pools recovering) under a one-line status; at the end a summary with the time to recovery.\n"
                "Colour on a terminal unless NO_COLOR is set; none when piped. See docs/demo.md.\n\n"
                "examples:\n  patrol demo\n  patrol demo --duration 90\n"
                "  patrol demo --duration 90 --logs /tmp/demo | tee demo.txt", _run_demo)
    demo.add_argument("--duration", type=_seconds, default=None, metavar="SECONDS",
                      help="stop after this long (default: until Ctrl-C)")
    demo.add_argument("--incident-after", type=_seconds, default=20.0, metavar="SECONDS",
                      help="when to revoke the KEDA PAT out of band")
    demo.add_argument("--interval", type=_seconds, default=1.0, metavar="SECONDS",
                      help="seconds between looks at the world")
    demo.add_argument("--status-every", type=_seconds, default=15.0, metavar="SECONDS",
                      help="when piped: print the status line at most this often (only when it changed)")
    demo.add_argument("--logs", default=None, metavar="DIR",
                      help="keep every process's log here (default: ./.demo/<UTC timestamp>)")
    demo.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                      help="colour: auto = on a terminal without NO_COLOR")
    _common(demo, env, config=False)

    # exporter
    from exporter import cli as exporter_cli

    exporter_cli.add_parser(sub, env, common=lambda p: _common(p, env))

    # worker, rotate, history
    from remediation import cli as remediation_cli

    remediation_cli.add_parsers(sub, env, common=lambda p: _common(p, env))
    remediation_cli.add_adopt_parser(sub, env, common=lambda p: _common(p, env))

    # alerts render, dashboard render
    from patrol import render_cmd

    render_cmd.add_parsers(sub, env, common=lambda p: _common(p, env), formatter=_Formatter)

    # login
    login = _sub(sub, "login", "sign in once as the bot account (device code) for silent refresh later",
                 "For bot accounts protected by MFA: run once interactively; the worker then refreshes\n"
                 "silently from the persistent token cache.\n\nexamples:\n"
                 "  patrol login --config patrol.yaml --organization contoso", _run_login)
    login.add_argument("--organization", default=None, help="organization whose credential to sign in")
    _common(login, env)
    return parser


def _load_config(args: argparse.Namespace, file: str | None = None) -> Config:
    path = file or args.config
    if not path:
        raise ConfigError("(none)", "", "no configuration file given",
                          "pass --config FILE or set PATROL_CONFIG")
    return load_config(path)


def _run_config_check(args: argparse.Namespace) -> int:
    from patrol import config_cmd

    if args.file is None:
        args.file = args.config
    return config_cmd.run(args)


def _run_sandbox(args: argparse.Namespace) -> int:
    from sandbox.__main__ import main as sandbox_main

    argv = ["--ready-file", args.ready_file, "--scenario", args.scenario]
    if args.dir:
        argv += ["--dir", args.dir]
    if args.duration is not None:
        argv += ["--duration", str(args.duration)]
    return sandbox_main(argv)


def _run_demo(args: argparse.Namespace) -> int:
    from patrol import demo

    return demo.run(duration=args.duration, interval=args.interval, workdir=args.logs,
                    incident_after=args.incident_after, colour=args.color, status_every=args.status_every)


def _run_login(args: argparse.Namespace) -> int:
    from patrol import login

    return login.run(_load_config(args), organization=args.organization)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = build_parser(env)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    logs.configure(getattr(args, "log_format", "text"), getattr(args, "log_level", "INFO"))
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"patrol: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ListenError as exc:
        print(f"patrol {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PatrolError as exc:
        print(f"patrol: {logs.redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # The reader went away (`patrol config example | head`): not worth a traceback. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
