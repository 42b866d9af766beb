"""Provides the `natbox` command line: the same engine as the TUI, scriptable, with --json.

Every user error is one line on stderr with a hint, and exit code 2. No arguments opens the TUI.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from natbox import __version__
from natbox.errors import NatboxError
from natbox.model import PROTOS, Forward
from natbox.plan import build_plan
from natbox.runner import Runner
from natbox.system import route_to


class UsageError(NatboxError):
    """A command line argparse could not accept."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one natbox line instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, f"see {self.prog} --help")


def forward_from_args(args: argparse.Namespace, runner: Runner | None = None) -> Forward:
    """Build the Forward the user described; derive the SNAT source from the route if not given."""
    snat: str | None = args.snat
    if snat is None and not args.masquerade:
        # Validate everything else first, so bad input is reported before any lookup.
        probe = Forward.from_text(
            args.listen,
            args.backend,
            proto=args.proto,
            name=args.name,
            masquerade=True,
            mss_clamp=args.mss_clamp,
            sources=args.sources,
        )
        route = route_to(probe.backend.ip, runner)
        if route.src is None:
            raise NatboxError(
                f"the route to {probe.backend.ip} (dev {route.dev}) has no source address",
                "pass --snat ADDR or --masquerade",
            )
        snat = str(route.src)
    return Forward.from_text(
        args.listen,
        args.backend,
        proto=args.proto,
        name=args.name,
        snat=snat,
        masquerade=args.masquerade,
        mss_clamp=args.mss_clamp,
        sources=args.sources,
    )


def _add_forward_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("listen", help="client-facing ip:port (or ip:lo-hi), e.g. 192.168.1.30:1234")
    p.add_argument("backend", help="backend ip:port, e.g. 10.0.2.50:80")
    p.add_argument("--proto", default="tcp", choices=PROTOS, help="protocol (default tcp)")
    p.add_argument("--name", help="forward name (default <proto>-<port>)")
    snat = p.add_mutually_exclusive_group()
    snat.add_argument(
        "--snat", metavar="ADDR", help="SNAT source (default: derived from the route)"
    )
    snat.add_argument("--masquerade", action="store_true", help="SNAT to the outgoing address")
    p.add_argument("--mss-clamp", action="store_true", help="clamp TCP MSS to the path MTU")
    p.add_argument(
        "--from",
        dest="sources",
        action="append",
        default=[],
        metavar="CIDR",
        help="only clients from CIDR (repeatable)",
    )


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the rule set a forward needs, changing nothing."""
    plan = build_plan(forward_from_args(args))
    if args.format == "restore":
        print(plan.restore_text(), end="")
    elif args.format == "commands":
        print("\n".join(plan.command_lines()))
    elif args.format == "json":
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        fwd = plan.forward
        print(f"forward {fwd.name}: {fwd.proto} {fwd.listen} → {fwd.backend}")
        print("\n".join(plan.plain()))
        print()
        print(plan.restore_text(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = _Parser(
        prog="natbox",
        description="Forward one port across a dual-homed Linux box (DNAT + SNAT + FORWARD). "
        "Without a command, opens the dashboard.",
    )
    parser.add_argument("--version", action="version", version=f"natbox {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    p = sub.add_parser("plan", help="show the rules a forward needs (changes nothing)")
    _add_forward_args(p)
    p.add_argument("--format", choices=("text", "restore", "commands", "json"), default="text")
    p.set_defaults(func=cmd_plan)
    return parser


def _run_tui() -> int:
    # Imported here so that `import natbox` never pulls in textual.
    app_module = importlib.import_module("tui.app")
    run: Callable[[], int] = app_module.run
    return run()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `natbox` script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(args_list)
        if args.command is None:
            return _run_tui()
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except NatboxError as exc:
        print(exc.one_line(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("natbox: interrupted", file=sys.stderr)
        return 130
