"""Provides the `natbox` command line: the same engine as the TUI, scriptable, with --json.

Every user error is one line on stderr with a hint, and exit code 2. No arguments opens the TUI.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from natbox import __version__, disabled, gcpause, prefetch, watchdog
from natbox.backends import Backend, families
from natbox.backends.detect import BACKEND_CHOICES, choose_backend
from natbox.errors import NatboxError, NotFoundError
from natbox.lazy import OnUse
from natbox.model import PROTOS, Forward
from natbox.paths import writes
from natbox.plan import OWN_CHAINS, build_plan
from natbox.ruleset import ForwardState, forward_states
from natbox.runner import Runner
from natbox.status import snapshot
from natbox.system import route_to

TYPE_CHECKING = False  # not typing's: `natbox list` imports no typing (~4 ms); mypy knows the name
if TYPE_CHECKING:
    from typing import Any, NoReturn


if TYPE_CHECKING:
    from natbox import (
        checks,
        conntrack,
        converge,
        declare,
        export,
        modify,
        persist,
        tables,
        trace,
        txn,
    )
else:
    checks = OnUse("natbox.checks")
    conntrack = OnUse("natbox.conntrack")
    converge = OnUse("natbox.converge")
    declare = OnUse("natbox.declare")
    export = OnUse("natbox.export")
    modify = OnUse("natbox.modify")
    persist = OnUse("natbox.persist")
    tables = OnUse("natbox.tables")
    trace = OnUse("natbox.trace")
    txn = OnUse("natbox.txn")


EXPORT_FORMATS = ("json", "toml", "ansible", "restore", "commands")
"""export.FORMATS, and FLOW_SORT_KEYS conntrack.SORT_KEYS, spelled out: building the parser
imports neither module (tests/core/test_cli.py checks they agree)."""
FLOW_SORT_KEYS = ("age", "bytes", "packets", "timeout")


class UsageError(NatboxError):
    """A command line argparse could not accept."""


def _window(text: str) -> float:
    """argparse type for confirm windows: finite seconds from 5 to 3600."""
    try:
        return watchdog.parse_window(text)
    except NatboxError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


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
            local=args.local,
        )
        try:
            route = route_to(probe.backend.ip, runner)
        except NatboxError as exc:
            raise NatboxError(
                f"this box has no route to the backend {probe.backend.ip}: "
                + exc.message.split(": ", 1)[-1],
                f"add a route to {probe.backend.ip} (ip route add ...) or fix the backend address"
                + (
                    "; to only plan it, pass --snat ADDR"
                    if getattr(args, "command", "") == "plan"
                    else "; natbox check shows what else is in the way"
                ),
            ) from None
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
        local=args.local,
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
        "--local",
        action="store_true",
        help="also forward this box's own connections to the listen address (nat OUTPUT)",
    )
    p.add_argument(
        "--from",
        dest="sources",
        action="append",
        default=[],
        metavar="CIDR",
        help="only clients from CIDR (repeatable)",
    )


def _add_change_args(p: argparse.ArgumentParser, preflight: bool = True) -> None:
    """What add, edit, enable (and, without the preflight's, disable) take to go ahead."""
    if preflight:
        p.add_argument(
            "--enable-forwarding",
            action="store_true",
            help="turn on net.ipv4.ip_forward if it is off",
        )
    p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    p.add_argument(
        "--confirm",
        type=_window,
        metavar="SECONDS",
        help="roll back after SECONDS (5-3600) unless `natbox confirm` (survives a dropped SSH "
        "session)",
    )
    if preflight:
        p.add_argument("--force", action="store_true", help="apply despite preflight errors")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")
    p.add_argument("--json", action="store_true")


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


def _backend(args: argparse.Namespace) -> Backend:
    backend, _det = choose_backend(args.backend_choice)
    return backend


def _confirm(args: argparse.Namespace, question: str) -> None:
    """Go on only with --yes or an interactive y; a non-TTY without --yes is an error."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise NatboxError(
            "refusing to change the firewall without --yes (stdin is not a terminal)",
            "add --yes, or --dry-run to only look",
        )
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise NatboxError("nothing changed", "answer y to apply, or pass --yes")


def _print_lines(per_table: dict[str, list[str]]) -> None:
    for table, lines in per_table.items():
        print(f"*{table}")
        print("\n".join(lines))


def cmd_add(args: argparse.Namespace) -> int:
    """Add a forward: show the plan, ask, apply all or nothing."""
    from natbox.engine import Engine

    fwd = forward_from_args(args)
    if not args.dry_run:
        txn.require_root()
    txn.refuse_disabled_name(fwd.name)  # before the question (apply checks again under the lock)
    engine = Engine(args.backend_choice)
    backend = engine.backend()
    if not args.dry_run:
        _recover(backend)  # a crashed natbox's half-finished change first
    plan = build_plan(fwd)
    if args.dry_run:
        pending = txn.preview_apply(backend, fwd)
        if args.json:
            print(json.dumps({**plan.to_dict(), "would_commit": pending}, indent=2))
        else:
            print("\n".join(plan.plain()))
            _print_lines(pending)
        return 0
    if not args.json:
        print(f"forward {fwd.name}: {fwd.proto} {fwd.listen} → {fwd.backend} via {backend.label}")
        print("\n".join(plan.plain()))

    def judge(findings: list[checks.Finding]) -> None:
        if not args.json:
            _print_findings(findings)
        if not args.force:
            checks.raise_if_blocked(findings)

    if not args.yes:
        judge(engine.preflight(fwd))  # the findings come before the question
        _confirm(args, f"Apply forward {fwd.name}?")
    # With --confirm the watchdog is armed before the rules go in (Engine.apply). With --yes the
    # preflight runs inside the change, on the one ruleset read the change decides on.
    outcome = engine.apply(
        fwd,
        confirm_seconds=args.confirm,
        enable_forwarding=args.enable_forwarding,
        adopt=args.adopt,
        judge=judge if args.yes else None,
    )
    if args.confirm is not None:
        outcome.notes.append(
            f"rolled back in {args.confirm:g} s unless you run: natbox confirm (or natbox rollback now)"
        )
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2))
    else:
        for note in outcome.notes:
            print(f"note: {note}")
        print(f"added {fwd.name} ({outcome.seconds * 1000:.0f} ms)")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """Remove a forward: show exactly the rules that go (asking first unless --yes), delete them.
    A disabled forward (nothing in the kernel) is forgotten."""
    try:
        return _remove(args)
    except NotFoundError:
        if disabled.find(args.name) is None:
            raise
    if not args.dry_run:
        _confirm(args, f"Forget the disabled forward {args.name}?")
        if not modify.discard(args.name):
            raise NotFoundError(f"there is no forward named {args.name}", "natbox list shows them")
    verb = "would forget" if args.dry_run else "forgot"
    if args.json:
        print(json.dumps({"name": args.name, "action": "forget", "applied": not args.dry_run}))
    else:
        print(f"{verb} the disabled {args.name} (nothing in the kernel changes)")
    return 0


def _remove(args: argparse.Namespace) -> int:
    if not args.dry_run:
        txn.require_root()
    backend = _backend(args)
    shown: Forward | None = None  # asked about: what goes must be what the question showed
    if args.dry_run or not args.yes:
        pending, shown = txn.preview_remove_shown(backend, args.name)
        if args.json and args.dry_run:
            print(json.dumps({"name": args.name, "would_commit": pending}, indent=2))
            return 0
        if not args.json:
            _print_lines(pending)
        if args.dry_run:
            return 0
        _confirm(args, f"Remove forward {args.name}?")
    _recover(backend)
    with tables.tracked(backend):  # an nft table natbox created goes again once empty
        outcome = txn.remove(backend, args.name, shown)
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2))
        return 0
    if args.yes:
        _print_lines(outcome.lines)
    print(f"removed {args.name} ({outcome.seconds * 1000:.0f} ms)")
    return 0


def _modify(args: argparse.Namespace, plan: Callable[[Backend, list[str]], modify.Planned]) -> int:
    """edit, disable, enable: plan (reads only), show, ask, carry out as one transaction."""
    if not args.dry_run:
        txn.require_root()
    backend, det = choose_backend(args.backend_choice)
    if not args.dry_run:
        _recover(backend)  # a crashed natbox's half-finished change first
    planned = plan(backend, _other_side(det.warnings))
    report = planned.report
    blocked = declare.blocking(report) if report.changed and not args.force else None
    if args.dry_run or not report.changed:
        if args.json:
            print(json.dumps(planned.to_dict(), indent=2))
        else:
            print("\n".join(planned.render()))
        if blocked is not None:
            raise blocked
        return 0
    if not args.json:
        print("\n".join(planned.render()))
    if blocked is not None:
        raise blocked
    _confirm(args, f"{planned.action.capitalize()} forward {planned.name}?")
    outcome = modify.carry(
        backend,
        planned,
        force=args.force,
        enable_forwarding=args.enable_forwarding,
        confirm_seconds=args.confirm,
        backend_choice=args.backend_choice,
    )
    if args.json:
        print(
            json.dumps({**planned.to_dict(), "notes": [*planned.notes, *outcome.notes]}, indent=2)
        )
    else:
        for note in outcome.notes:
            print(f"note: {note}")
        print(
            f"{planned.action.removesuffix('e')}ed {planned.name} ({outcome.seconds * 1000:.0f} ms)"
        )
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    """Change a forward: the old rules out and the new ones in, one transaction per table."""
    edits = modify.parse(  # the whole edit is checked before anything is read
        modify.Edits(
            listen=args.listen,
            backend=args.new_backend,
            proto=args.proto,
            name=args.new_name,
            snat=args.snat,
            masquerade=args.masquerade,
            mss_clamp=args.mss_clamp,
            local=args.local,
            sources=tuple(args.sources) if args.sources is not None else None,
        )
    )
    return _modify(
        args,
        lambda backend, other_side: modify.plan_edit(
            backend,
            args.name,
            edits,
            other_side=other_side,
            enable_forwarding=args.enable_forwarding,
        ),
    )


def cmd_disable(args: argparse.Namespace) -> int:
    """Take a forward's rules out and remember it whole (natbox enable puts it back)."""
    return _modify(args, lambda backend, _other_side: modify.plan_disable(backend, args.name))


def cmd_enable(args: argparse.Namespace) -> int:
    """Put a disabled forward back: preflight, apply, read back."""
    return _modify(
        args,
        lambda backend, other_side: modify.plan_enable(
            backend, args.name, other_side=other_side, enable_forwarding=args.enable_forwarding
        ),
    )


def _print_findings(findings: list[checks.Finding], indent: str = "") -> None:
    for f in findings:
        print(f"{indent}{f.severity:<8} {f.message}")
        for line in f.lines():
            print(f"{indent}{'':<8}   {line}")
        if f.severity != checks.INFO:
            print(f"{indent}{'':<8} fix: {f.fix}")


def cmd_check(args: argparse.Namespace) -> int:
    """Diagnose a forward before adding it: exit 0 clean, 1 findings."""
    from natbox.engine import Engine

    try:
        fwd = forward_from_args(args)
    except NatboxError as exc:
        if "no route to the backend" not in exc.message:
            raise
        # No route is a finding (exit 1), not a usage error: check the rest as if masquerading.
        args.masquerade = True
        fwd = forward_from_args(args)
    findings = Engine(args.backend_choice).preflight(fwd)
    if args.json:
        print(
            json.dumps(
                {"forward": fwd.to_dict(), "findings": [f.to_dict() for f in findings]}, indent=2
            )
        )
    else:
        print(f"check {fwd.name}: {fwd.proto} {fwd.listen} → {fwd.backend}")
        _print_findings(findings, "  ")
        if not checks.exit_code(findings):
            print("  clean: nothing in the way")
    return checks.exit_code(findings)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Diagnose the forwards in the kernel: exit 0 clean, 1 findings."""
    from natbox.engine import Engine

    report = Engine(args.backend_choice).doctor(args.name)
    if args.json:
        print(json.dumps({n: [f.to_dict() for f in fs] for n, fs in report.items()}, indent=2))
    else:
        if not report:
            print("no natbox forwards")
        for name, findings in report.items():
            state = "clean" if not checks.exit_code(findings) else "needs attention"
            print(f"{name}: {state}")
            _print_findings(findings, "  ")
    return max((checks.exit_code(fs) for fs in report.values()), default=0)


def _traced_forward(backend: Backend, which: str) -> Forward:
    """The forward in the kernel named `which`, or listening on `which` (ip:port)."""
    for bound in families(backend):
        for state in forward_states(bound.read(natbox_only=True)):
            fwd = state.forward
            if fwd is not None and which in (fwd.name, str(fwd.listen)):
                return fwd
    raise NotFoundError(f"there is no forward {which}", "natbox list shows them (NAME or ip:port)")


def cmd_trace(args: argparse.Namespace) -> int:
    """Ask the kernel which rules the forward's next connection meets (nft hosts)."""
    txn.require_root()
    why = trace.unavailable()
    if why is not None:
        raise trace.TraceUnavailable(why, "natbox doctor diagnoses without a trace")
    fwd = _traced_forward(_backend(args), args.forward)

    def show(pkt: trace.TracedPacket) -> None:
        if not args.json:
            print("\n".join(pkt.lines(fwd)), flush=True)

    if not args.json:
        print(
            f"tracing {fwd.name} ({fwd.proto} {fwd.listen} → {fwd.backend}): waiting up to "
            f"{args.timeout:g} s for a connection (Ctrl-C stops)",
            flush=True,
        )

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM/SIGHUP end the trace like Ctrl-C: the rules go

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    result = trace.run(fwd, timeout=args.timeout, on_packet=show)
    dropped = [p for p in result.packets if p.dropped_by is not None]
    if args.json:
        print(
            json.dumps(
                {
                    "forward": fwd.to_dict(),
                    "timed_out": result.timed_out,
                    "packets": [p.to_dict(fwd) for p in result.packets],
                },
                indent=2,
            )
        )
    elif not result.packets:
        print(f"no packet for {fwd.listen} within {args.timeout:g} s (is a client trying?)")
    return 1 if dropped or not result.packets else 0


def _recover(backend: Backend) -> None:
    """Finish or undo what a crashed natbox (or a dead watchdog) left behind, and say so."""
    with writes(
        "recovering the change a crashed natbox left: its journal could not be cleared or its "
        "record written (natbox list shows what the kernel holds now)",
        "free space or fix the permissions there, then natbox recover",
    ):
        for message in (txn.recover(backend), converge.recover_set(backend)):
            if message:
                print(f"natbox: recovered: {message}", file=sys.stderr)


def cmd_recover(args: argparse.Namespace) -> int:
    """Finish or undo what a crashed natbox left behind."""
    txn.require_root()
    backend = _backend(args)
    done = (
        txn.recover(backend),
        converge.recover_set(backend),
        watchdog.supervise(),
        trace.cleanup_stale(),
    )
    print("\n".join(m for m in done if m) or "nothing to recover")
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    """Record natbox's forwards (only natbox's) and install what restores them at boot."""
    txn.require_root()
    backend = _backend(args)
    states = txn.all_forward_states(backend)
    broken = [s.name for s in states if not s.intact or s.forward is None]
    if broken:
        raise NatboxError(
            f"forward {broken[0]} is broken, not saving it", f"natbox doctor {broken[0]}"
        )
    forwards = [s.forward for s in states if s.forward is not None]
    held = {f.name for f in disabled.load()} - {f.name for f in forwards}
    if held:  # a disabled forward keeps its saved entry (restore skips it until it is enabled)
        kept = [f for f in persist.load() if f.name in held]
        forwards += kept
        if kept:
            print(
                f"keeping the saved entries of disabled forwards: {', '.join(f.name for f in kept)}"
            )
    names = ", ".join(f.name for f in forwards) or "none"
    print(f"saving forwards: {names} -> {persist.saved_path()}")
    _confirm(args, "Write them and install the boot-time restore?")
    path, unit, sysctl, notes = _save(forwards)
    print(f"saved {len(forwards)} forwards to {path}")
    if unit:
        print(f"installed {unit} (enabled)")
    if sysctl:
        print(f"installed {sysctl} (net.ipv4.ip_forward = 1)")
    for note in notes:
        print(f"note: {note}")
    return 0


def _save(forwards: list[Forward]) -> tuple[Path, Path | None, Path | None, list[str]]:
    """Write the saved set, then install the boot-time restore; a file that cannot be written is
    one error that says what was saved (the rules in the kernel are never touched here)."""
    with writes(
        "nothing was saved: the saved set could not be written (the rules in the kernel stay "
        "as they are; boot restores the saved set as it was)",
        "free space or fix the permissions there, then natbox save again",
    ):
        path = persist.write(forwards)
    with writes(
        f"saved {len(forwards)} forwards to {path}, but the boot-time restore could not be "
        "installed (the rules in the kernel stay as they are)",
        "free space or fix the permissions there, then natbox save again",
    ):
        unit, sysctl, notes = persist.install_boot(txn.forwarding_enabled_by_natbox())
    return path, unit, sysctl, notes


def cmd_forget(args: argparse.Namespace) -> int:
    """Drop one forward from the saved set (its rules stay until natbox remove)."""
    txn.require_root()
    saved = persist.load()
    if args.name not in [f.name for f in saved]:
        known = ", ".join(f.name for f in saved) or "none"
        raise NatboxError(f"{args.name} is not saved", f"saved now: {known}")
    with writes(
        f"{args.name} was not forgotten: the saved set could not be written (boot still "
        "restores it; its rules in the kernel stay as they are)",
        "free space or fix the permissions there, then natbox forget again",
    ):
        persist.write([f for f in saved if f.name != args.name])
    print(f"forgot {args.name} (its rules stay until: natbox remove {args.name})")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Re-apply saved forwards that are missing; leave the ones that are there (idempotent)."""
    txn.require_root()
    saved = persist.load()  # validated whole before anything is touched
    backend = _backend(args)
    _recover(backend)
    held = {f.name for f in disabled.load()}  # disabled: not restored until enabled
    skipped = [f.name for f in saved if f.name in held]
    saved = [f for f in saved if f.name not in held]
    # The whole saved set is one transaction (all of it or nothing), as `natbox apply` does it:
    # missing forwards are added, broken or different copies replaced, others left as they are.
    wanted = declare.Wanted(str(persist.saved_path()), [declare.Entry(f, 0) for f in saved])
    report = declare.plan(backend, wanted, enable_forwarding=True, diagnose=False)
    declare.carry_out(backend, report, force=True, enable_forwarding=True)
    change = report.change
    applied = [f.name for f in change.added] + [new.name for _, new in change.replaced]
    kept = len(saved) - len(applied)
    print(f"restored {', '.join(applied) or 'nothing'}; {kept} already there")
    if skipped:
        print(f"skipped disabled: {', '.join(skipped)} (natbox enable NAME puts one back)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Print natbox's forwards for other tools."""
    backend = _backend(args)
    states = txn.all_forward_states(backend)
    forwards = [s.forward for s in states if s.forward is not None]
    if args.names:
        missing = sorted(set(args.names) - {f.name for f in forwards})
        if missing:
            raise NotFoundError(f"there is no forward named {missing[0]}", "natbox list shows them")
        forwards = [f for f in forwards if f.name in args.names]
    if not forwards:
        raise NatboxError("no natbox forwards to export", "natbox add one first")
    print(export.export(forwards, args.format), end="")
    return 0


def _other_side(det_warnings: list[str]) -> list[str]:
    return [w for w in det_warnings if "also sit" in w]


def cmd_apply(args: argparse.Namespace) -> int:
    """Make natbox's forwards in the kernel what FILE says: one transaction, or nothing."""
    try:
        return _apply(args)
    except NatboxError as exc:
        if args.json:  # a playbook reads stdout: say what failed there too
            print(json.dumps({"changed": False, "failed": True, "error": exc.one_line()}))
        raise


def _apply(args: argparse.Namespace) -> int:
    wanted = declare.load(args.file)  # the whole file is checked before anything is read or touched
    if not args.check:
        txn.require_root()
    backend, det = choose_backend(args.backend_choice)
    if not args.check:
        _recover(backend)
    report = declare.plan(
        backend,
        wanted,
        prune=args.prune,
        enable_forwarding=args.enable_forwarding,
        other_side=_other_side(det.warnings),
    )
    if args.check or not report.changed:
        report.check = args.check
        blocked = declare.blocking(report) if report.changed and not args.force else None
        if args.json:
            print(json.dumps(report.to_dict(args.diff), indent=2))
        else:
            print("\n".join(declare.render(report, diff=args.diff)))
        if blocked is not None:
            raise blocked
        return 0
    if not args.json:
        print("\n".join(declare.render(report, diff=args.diff)))
    if not args.force:
        blocked = declare.blocking(report)
        if blocked is not None:
            raise blocked
    _confirm(args, "Apply these changes?")
    declare.carry_out(
        backend,
        report,
        force=args.force,
        enable_forwarding=args.enable_forwarding,
        confirm_seconds=args.confirm,
        backend_choice=args.backend_choice,
    )
    if args.json:
        print(json.dumps(report.to_dict(args.diff), indent=2))
    else:
        for note in report.notes:
            print(f"note: {note}")
        c = report.change
        print(
            f"applied: {len(c.added)} added, {len(c.replaced)} replaced, {len(c.removed)} removed "
            f"({report.seconds * 1000:.0f} ms)"
        )
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    """Drift: how the kernel differs from FILE (default: the saved set), with the fix. Exit 1 on drift."""
    path = args.file or str(persist.saved_path())
    if args.file is None and not persist.saved_path().exists():
        raise NatboxError(f"{path} does not exist", "natbox save first, or give a FILE")
    wanted = declare.load(path)
    skipped: list[str] = []
    if args.file is None:  # the saved set: a disabled forward is meant to be out of the kernel
        held = {f.name for f in disabled.load()}
        skipped = [e.forward.name for e in wanted.entries if e.forward.name in held]
        wanted.entries = [e for e in wanted.entries if e.forward.name not in held]
    backend, _det = choose_backend(args.backend_choice)
    report = declare.plan(backend, wanted, diagnose=False)
    if skipped:
        report.notes.append(f"disabled, not compared: {', '.join(skipped)}")
    if args.json:
        print(json.dumps(report.to_dict(diff=True), indent=2))
    else:
        print("\n".join(declare.render(report, diff=True, drift=True)))
        if report.changed:
            fix = (
                f"natbox apply {path}" if args.file else f"natbox apply {path} (or natbox restore)"
            )
            print(f"fix: {fix}")
    return 1 if report.changed else 0


def cmd_confirm(args: argparse.Namespace) -> int:
    """Keep the change waiting in its confirm window."""
    txn.require_root()
    print(f"kept {watchdog.confirm()}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Roll back the change waiting in its confirm window, now."""
    txn.require_root()
    print(f"rolled back {watchdog.rollback()}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Show natbox's forwards, the foreign NAT/FORWARD rules and the facts that matter."""
    backend, det = choose_backend(args.backend_choice)
    snap = snapshot(backend, det)
    if args.json:
        print(json.dumps(snap, indent=2))
        return 0
    forwarding = "on" if snap["ip_forward"] else "OFF"
    forwarding6 = "on" if snap["ip6_forward"] else "OFF"
    print(f"backend {snap['backend']}   ip_forward {forwarding}   ipv6 forwarding {forwarding6}")
    for key, tool in (("policies", "iptables"), ("policies6", "ip6tables")):
        policies = snap[key]
        assert isinstance(policies, dict)
        if policies:
            print(f"{tool + ' policies':<19}" + "  ".join(f"{k} {v}" for k, v in policies.items()))
    chains = snap["chains"]
    assert isinstance(chains, list)
    own = [c for c in chains if str(c["chain"]).startswith("NATBOX-")]
    for fam, tool in ((4, "iptables"), (6, "ip6tables")):
        mine = [c for c in own if c["family"] == fam]
        if mine:
            listed = "  ".join(f"{c['table']}/{c['chain']} ({c['rules']})" for c in mine)
            print(f"{tool + ' chains':<19}{listed}")
    forwards = snap["forwards"]
    assert isinstance(forwards, list)
    print(f"\nforwards ({len(forwards)})")
    for f in forwards:
        _print_forward(f, "ok" if f["intact"] else "BROKEN: " + "; ".join(f["problems"]))
    held = snap["disabled"]
    assert isinstance(held, list)
    if held:
        print(f"\ndisabled ({len(held)})")
        for f in held:
            _print_forward(f, f"disabled (natbox enable {f['name']})")
    foreign = snap["foreign"]
    assert isinstance(foreign, list)
    print(f"\nforeign NAT and FORWARD rules ({len(foreign)})")
    for r in foreign:
        where = f"{'ip6 ' if r['family'] == 6 else ''}{r['table']}/{r['chain']}"
        print(f"  {where:<20} {r['owner']:<6} {r['rule']}")
    warnings = snap["warnings"]
    assert isinstance(warnings, list)
    for w in warnings:
        print(f"warning: {w}")
    return 0


def _print_forward(f: dict[str, Any], state: str) -> None:
    snat = "masquerade" if f.get("masquerade") else f"snat {f.get('snat')}"
    opts = " mss-clamp" if f.get("mss_clamp") else ""
    print(
        f"  {f['name']:<16} {f.get('proto', '?'):<4} {f.get('listen', '?')} → {f.get('backend', '?')}"
        f"  {snat}{opts}  {state}"
    )


class _RulesRead:
    """natbox's forwards (from the kernel's rules), read in a thread while the flows are read: the
    rules by iptables-save (a process: it waits, we do not), the flows by us."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.backend, _det = choose_backend(args.backend_choice)
        self.found: list[list[ForwardState]] = []
        self.failed: list[BaseException] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            # A forward is named, and its listen address and protocols given, by its DNAT rules,
            # which live only in natbox's own nat chains: `iptables -S` of those (a few ms each)
            # is enough here, where a full iptables-save of a lived-in box (10,000 rules) costs
            # ~0.3 s of CPU, taken from the flows' decoding on a small box.
            chains = {"nat": [own for _builtin, own in OWN_CHAINS["nat"]]}
            self.found.append(
                [
                    state
                    for bound in families(self.backend)
                    for state in forward_states(bound.read_chains(chains))
                ]
            )
        except BaseException as exc:  # handed to the main thread, raised there
            self.failed.append(exc)

    def running(self) -> bool:
        return self.thread.is_alive()

    def index(self) -> conntrack.ForwardIndex:
        """The forwards flows are matched to (waits for the read; raises what it raised)."""
        self.thread.join()
        if self.failed:
            raise self.failed[0]
        states = self.found[0]
        names = [s.name for s in states]
        if self.args.forward is not None and self.args.forward not in names:
            raise NotFoundError(
                f"there is no forward named {self.args.forward}",
                f"natbox list shows them (now: {', '.join(names) or 'none'})",
            )
        return conntrack.ForwardIndex(s.forward for s in states if s.forward is not None)


def _flows_with_forwards(
    args: argparse.Namespace,
) -> tuple[conntrack.FlowRead, conntrack.ForwardIndex, list[str]]:
    """Read the table and the forwards (from the kernel's rules) that flows are matched to."""
    rules = _RulesRead(args)
    table = conntrack.read_flows()
    index = rules.index()
    notes = [f"skipped {table.skipped} malformed lines"] if table.skipped else []
    return table, index, notes


_CHUNK = 10_000
"""Flows formatted per write: output streams, and memory stays one chunk of text."""


def cmd_conntrack(args: argparse.Namespace) -> int:
    """List flows with both tuples, or kill some."""
    if args.action == "kill":
        return _conntrack_kill(args)
    if args.tuple:
        raise UsageError(
            "--tuple is for `natbox conntrack kill`", "natbox conntrack kill --tuple ..."
        )
    if args.enable_accounting:
        conntrack.enable_accounting()
    rules = _RulesRead(args)
    whole = args.forward is None and args.proto is None and args.state is None
    if whole and args.sort is None and args.limit is None and conntrack.reader() != "proc":
        streamed = _conntrack_stream(args, rules)
        if streamed is not None:
            return streamed
    table = conntrack.read_flows()
    index = rules.index()
    notes = [f"skipped {table.skipped} malformed lines"] if table.skipped else []
    flows, plain = table.flows, table.plain
    if args.enable_accounting:
        notes.append("accounting is on: new flows count packets and bytes")
    shown = conntrack.select(
        flows,
        index=index,
        forward=args.forward,
        proto=args.proto,
        state=args.state,
        sort=args.sort,
        limit=args.limit,
    )
    fill = conntrack.table_fill()
    out = sys.stdout
    if args.json_lines:
        # One flow per line, written as it is made: pipelines start reading at once.
        for start in range(0, len(shown), _CHUNK):
            out.write(
                "".join(
                    f.to_json(index(f), plain=plain) + "\n" for f in shown[start : start + _CHUNK]
                )
            )
        return 0
    if args.json:
        _json_head(out, fill, len(flows), len(shown), notes)
        sep = "\n  "
        for start in range(0, len(shown), _CHUNK):
            out.write(
                sep
                + ",\n  ".join(
                    f.to_json(index(f), plain=plain) for f in shown[start : start + _CHUNK]
                )
            )
            sep = ",\n  "
        out.write("\n ]\n}\n")
        return 0
    out.write(conntrack.TEXT_HEADER)
    for start in range(0, len(shown), _CHUNK):
        out.write(conntrack.text_lines(shown[start : start + _CHUNK], index, fill.accounting))
    _text_foot(fill, len(shown), len(flows), notes)
    return 0


def _json_head(out: Any, fill: conntrack.Fill, total: int, shown: int, notes: list[str]) -> None:
    head = {
        "count": fill.count,
        "max": fill.max,
        "accounting": fill.accounting,
        "total": total,
        "shown": shown,
        "notes": notes,
    }
    # The document json.dumps would make, one flow a line, each flow written directly.
    out.write(json.dumps(head, indent=1)[:-2] + ',\n "flows": [')


def _text_foot(fill: conntrack.Fill, shown: int, total: int, notes: list[str]) -> None:
    print(f"{shown} of {total} flows; table {fill.count}/{fill.max}")
    if not fill.accounting:
        print(
            "note: packet/byte counters are off (sysctl net.netfilter.nf_conntrack_acct=1 turns them on)"
        )
    for note in notes:
        print(f"note: {note}")


def _conntrack_stream(args: argparse.Namespace, rules: _RulesRead) -> int | None:
    """The whole table, unfiltered and unsorted, from the ctnetlink dump straight to the output:
    each datagram (~200 flows) is decoded into the lines it prints, no Flow objects, and written
    as one string. Lines decoded while natbox's rules are still being read (iptables-save, in a
    thread) wait for their forwards' names.

    None when the caller should read /proc instead (no ctnetlink here, or a flow this decoder
    cannot show as /proc would, met before any output went out)."""
    from natbox.conntrack import dump

    fill = conntrack.table_fill()
    kind = "json" if (args.json or args.json_lines) else "text"
    out = sys.stdout
    decoder = dump.Decoder(kind, accounting=fill.accounting)
    waiting: list[tuple[list[str], list[Any]]] = []
    parts: list[str] = []  # --json: the document's head needs the count, so it is written last
    written = False

    def put(lines: list[str]) -> None:
        nonlocal written
        if not lines:
            return
        if args.json:
            parts.append(",\n  ".join(lines))
            return
        if kind == "text" and not written:
            out.write(conntrack.TEXT_HEADER)
        out.write("\n".join(lines) + "\n" if kind == "json" else "".join(lines))
        written = True

    def name_forwards() -> None:
        decoder.owners = owners = rules.index().packed()
        for lines, keys in waiting:
            put(dump.finish(kind, lines, keys, owners))
        waiting.clear()

    # No cycles among the strings made here; 100k of them would trigger the collector often.
    with gcpause.paused():
        # The threads that receive the dump and read the rules need the GIL this loop holds, for a
        # moment after each datagram or process: at the default 5 ms switch interval they waited for
        # it longer than they worked.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        try:
            with dump.open_dump() as sock:
                for data in dump.datagrams(sock):
                    if decoder.owners is None and not rules.running():
                        name_forwards()
                    lines = decoder.feed(data)
                    if decoder.error:
                        dump.check_error(decoder.error, decoder.count == 0)
                    if decoder.owners is None:
                        waiting.append((lines, decoder.keys))
                    else:
                        put(lines)
                    if decoder.done:
                        break
            if decoder.owners is None:
                name_forwards()
        except (dump.Unavailable, dump.Unsupported) as exc:
            if written or conntrack.reader() == "netlink":
                raise
            if os.environ.get("NATBOX_DEBUG"):  # why the slower /proc reader takes over
                print(f"natbox: ctnetlink reader gave way to /proc: {exc.message}", file=sys.stderr)
            return None
        finally:
            sys.setswitchinterval(interval)
    notes = [f"skipped {decoder.skipped} malformed lines"] if decoder.skipped else []
    if args.enable_accounting:
        notes.append("accounting is on: new flows count packets and bytes")
    if args.json:
        _json_head(out, fill, decoder.count, decoder.count, notes)
        sep = "\n  "
        for part in parts:  # one write each: no copy of the whole document
            out.write(sep)
            out.write(part)
            sep = ",\n  "
        out.write("\n ]\n}\n")
    elif kind == "text":
        if not written:
            out.write(conntrack.TEXT_HEADER)
        _text_foot(fill, decoder.count, decoder.count, notes)
    return 0


def _conntrack_kill(args: argparse.Namespace) -> int:
    if (args.forward is None) == (args.tuple is None):
        raise UsageError(
            "kill needs exactly one of --forward NAME or --tuple PROTO SRC:SPORT DST:DPORT",
            "see natbox conntrack --help",
        )
    wanted = conntrack.parse_tuple(*args.tuple) if args.tuple else None
    if not args.yes and not sys.stdin.isatty():
        raise NatboxError(
            "refusing to kill flows without --yes (stdin is not a terminal)", "add --yes"
        )
    table, index, _notes = _flows_with_forwards(args)
    flows = table.flows
    if wanted is not None:
        victims = [conntrack.find(flows, wanted)]
    else:
        victims = conntrack.select(flows, index=index, forward=args.forward)
    for f in victims:
        print(f"{f.proto:<6}{f.path()}")
    _confirm(args, f"Kill {len(victims)} flows?")
    start = time.perf_counter()
    deleted = conntrack.kill(victims)
    print(
        f"killed {deleted} of {len(victims)} flows ({(time.perf_counter() - start) * 1000:.1f} ms)"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The seed's lab in namespaces with the dashboard inside the nat box."""
    from natbox import demo

    if args.down:
        gone = demo.down()
        print(f"removed {', '.join(gone)}" if gone else "no demo was running")
        return 0
    return demo.run(args.flows, args.backend_choice)


COMMANDS = (
    "plan",
    "list",
    "add",
    "edit",
    "disable",
    "enable",
    "check",
    "doctor",
    "save",
    "forget",
    "restore",
    "trace",
    "recover",
    "export",
    "apply",
    "diff",
    "confirm",
    "rollback",
    "conntrack",
    "demo",
    "remove",
)
"""Every subcommand, in the order `natbox --help` lists them (a test checks the parser agrees)."""

_GLOBAL_VALUED = ("--backend", "--confirm-window")
"""The options before a command that take a value (as the next argument, or after `=`)."""


def command_of(args: Sequence[str]) -> str | None:
    """The subcommand `args` run, when it is plain to see: only whole global options before a known
    command name. None otherwise (help, --version, an abbreviation, a typo, no command)."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in COMMANDS:
            return arg
        if arg in _GLOBAL_VALUED:
            i += 2
        elif arg.startswith(tuple(f"{o}=" for o in _GLOBAL_VALUED)):
            i += 1
        else:
            return None
    return None


class _Unbuilt:
    """The parser of a subcommand that is not running: takes its arguments and keeps nothing
    (argparse spends ~0.5 ms building each of 21 subparsers, most of it on every command)."""

    def __getattr__(self, name: str) -> Callable[..., _Unbuilt]:
        return lambda *_args, **_kwargs: self


class _OnlySub:
    """add_subparsers() that builds only `command`'s parser (all of them when None)."""

    def __init__(self, real: Any, command: str | None) -> None:
        self.real, self.command = real, command

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if self.command is None or name == self.command:
            return self.real.add_parser(name, **kwargs)  # type: ignore[no-any-return]
        return _Unbuilt()  # type: ignore[return-value]


CONFIRM_WINDOW = 30.0
"""Seconds a forward added in the dashboard waits for y (--confirm-window)."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `command` (see command_of), only that subcommand's parser:
    what it parses is the same."""
    parser = _Parser(
        prog="natbox",
        description="Forward one port across a dual-homed Linux box (DNAT + SNAT + FORWARD). "
        "Without a command, opens the dashboard.",
    )
    parser.add_argument("--version", action="version", version=f"natbox {__version__}")
    parser.add_argument(
        "--backend",
        dest="backend_choice",
        choices=BACKEND_CHOICES,
        default=None,
        help="how to write rules (default auto, or $NATBOX_BACKEND)",
    )
    parser.add_argument(
        "--confirm-window",
        type=_window,
        default=CONFIRM_WINDOW,
        metavar="SECONDS",
        help="dashboard: how long a new forward waits for y before it is rolled back (default 30)",
    )
    sub = _OnlySub(
        parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND"), command
    )
    p = sub.add_parser("plan", help="show the rules a forward needs (changes nothing)")
    _add_forward_args(p)
    p.add_argument("--format", choices=("text", "restore", "commands", "json"), default="text")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("list", help="natbox's forwards and the foreign NAT/FORWARD rules")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("add", help="add a forward (all four rules, or none)")
    _add_forward_args(p)
    _add_change_args(p)
    p.add_argument(
        "--adopt",
        action="store_true",
        help="use natbox's chains even though they hold rules natbox did not write",
    )
    p.set_defaults(func=cmd_add)

    p = sub.add_parser(
        "edit", help="change a forward: its old rules out, the new ones in (one transaction)"
    )
    p.add_argument("name", help="the forward to change")
    p.add_argument("--listen", metavar="IP:PORT", help="new client-facing ip:port (or ip:lo-hi)")
    p.add_argument("--backend", dest="new_backend", metavar="IP:PORT", help="new backend ip:port")
    p.add_argument("--proto", choices=PROTOS, help="new protocol")
    p.add_argument("--name", dest="new_name", metavar="NEW", help="rename it (default: keep)")
    snat = p.add_mutually_exclusive_group()
    snat.add_argument(
        "--snat",
        metavar="ADDR",
        help="SNAT source (default: as it is; re-derived from the route if the backend address "
        "changes)",
    )
    snat.add_argument("--masquerade", action="store_true", help="SNAT to the outgoing address")
    p.add_argument(
        "--mss-clamp", action=argparse.BooleanOptionalAction, help="clamp TCP MSS (or not)"
    )
    p.add_argument(
        "--local",
        action=argparse.BooleanOptionalAction,
        help="also forward this box's own connections (or not)",
    )
    p.add_argument(
        "--from",
        dest="sources",
        action="append",
        metavar="CIDR",
        help="only clients from CIDR (repeatable; replaces the list; `--from any`: everyone)",
    )
    _add_change_args(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser(
        "disable", help="take a forward's rules out but remember it (natbox enable NAME)"
    )
    p.add_argument("name")
    _add_change_args(p, preflight=False)
    p.set_defaults(func=cmd_disable, force=False, enable_forwarding=False)

    p = sub.add_parser("enable", help="put a disabled forward back (preflight, apply, read back)")
    p.add_argument("name")
    _add_change_args(p)
    p.set_defaults(func=cmd_enable)

    p = sub.add_parser("check", help="diagnose a forward before adding it (exit 1 on findings)")
    _add_forward_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("doctor", help="diagnose the forwards in the kernel (exit 1 on findings)")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("save", help="save natbox's forwards and restore them at boot")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")
    p.set_defaults(func=cmd_save)
    p = sub.add_parser("forget", help="drop a forward from the saved set")
    p.add_argument("name")
    p.set_defaults(func=cmd_forget)
    p = sub.add_parser("restore", help="re-apply the saved forwards that are missing (boot)")
    p.set_defaults(func=cmd_restore)
    p = sub.add_parser(
        "trace", help="show the kernel's path for the forward's next connection (nft hosts)"
    )
    p.add_argument("forward", metavar="NAME|LISTEN", help="a forward's name or its ip:port")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("recover", help="finish or undo what a crashed natbox left behind")
    p.set_defaults(func=cmd_recover)
    p = sub.add_parser(
        "export",
        help="forwards as the file natbox apply reads (json, toml), an Ansible playbook, "
        "restore text or commands",
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="restore")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "apply", help="make natbox's forwards what FILE says (JSON or TOML; - reads stdin)"
    )
    p.add_argument("file", metavar="FILE", help="the wanted forwards (the saved set's format)")
    p.add_argument("--check", action="store_true", help="show what would change, change nothing")
    p.add_argument("--diff", action="store_true", help="show iptables-save lines before/after")
    p.add_argument("--prune", action="store_true", help="remove natbox forwards not in FILE")
    p.add_argument(
        "--confirm",
        type=float,
        metavar="SECONDS",
        help="roll the whole change back after SECONDS unless `natbox confirm`",
    )
    p.add_argument("--force", action="store_true", help="apply despite preflight errors")
    p.add_argument(
        "--enable-forwarding", action="store_true", help="turn on IP forwarding if it is off"
    )
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("diff", help="drift: the kernel against FILE (default the saved set)")
    p.add_argument("file", metavar="FILE", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("confirm", help="keep the change waiting in its confirm window")
    p.set_defaults(func=cmd_confirm)
    p = sub.add_parser("rollback", help="roll back the change waiting in its confirm window, now")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser(
        "conntrack", help="live flows with both tuples; `conntrack kill` deletes some"
    )
    p.add_argument("action", nargs="?", choices=("list", "kill"), default="list")
    p.add_argument("--forward", metavar="NAME", help="only this forward's flows")
    p.add_argument("--proto", help="tcp, udp, icmp, ...")
    p.add_argument("--state", help="TCP state, e.g. ESTABLISHED")
    p.add_argument("--sort", choices=FLOW_SORT_KEYS)
    p.add_argument("--limit", type=int, metavar="N")
    p.add_argument(
        "--tuple", nargs=3, metavar=("PROTO", "SRC:SPORT", "DST:DPORT"), help="kill: one flow"
    )
    p.add_argument("--yes", "-y", action="store_true", help="kill: do not ask")
    p.add_argument(
        "--enable-accounting",
        action="store_true",
        help="turn on per-flow packet/byte counters (sysctl net.netfilter.nf_conntrack_acct=1)",
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON document, one flow a line")
    fmt.add_argument(
        "--json-lines", action="store_true", help="one JSON object per flow and line, streamed"
    )
    p.set_defaults(func=cmd_conntrack)

    p = sub.add_parser("demo", help="the article's lab in namespaces, with the dashboard inside")
    p.add_argument("--flows", type=int, default=0, metavar="N", help="also create N UDP flows")
    p.add_argument("--down", action="store_true", help="remove a demo left by a crash")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("remove", help="remove a forward's rules, exactly those")
    p.add_argument("name")
    p.add_argument("--dry-run", action="store_true", help="show what would go, change nothing")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_remove)
    return parser


def _run_tui(backend_choice: str | None, confirm_seconds: float) -> int:
    # Imported here so that a CLI command never pays for (or needs) textual; the layering contract
    # in pyproject.toml allows exactly this one import from natbox into the TUI.
    from natbox.engine import Engine

    engine = Engine(backend_choice)
    engine.prefetch()  # the first ruleset read runs while Textual loads
    from tui.app import run

    return run(backend_choice, confirm_seconds, engine=engine)


_UNSUPERVISED = {"plan", "export", "confirm", "rollback", "recover", "demo"}
"""Commands that do not look after the confirm window first (they handle it themselves, or never
touch the state directory)."""


def _supervise() -> None:
    """Every natbox command makes sure a pending change has a live watchdog (and rolls back an
    expired one whose watchdog died), so the confirm window cannot be defeated by killing it."""
    if not os.geteuid() == 0:
        return
    try:
        message = watchdog.supervise()
    except NatboxError as exc:
        prefetch.discard()
        print(f"natbox: warning: {exc.one_line().removeprefix('natbox: ')}", file=sys.stderr)
        return
    if message:
        prefetch.discard()  # it may have changed the rules: `natbox list` reads them afresh
        print(f"natbox: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (the `natbox` script and `python -m natbox` run it: natbox.__main__)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args_list:  # the dashboard with its defaults: no parser to build (~6 ms, #13)
            return _run_tui(None, CONFIRM_WINDOW)
        args = build_parser(command_of(args_list)).parse_args(args_list)
        if args.command is None:
            return _run_tui(args.backend_choice, args.confirm_window)  # gc back on: see the TUI
        gcpause.start_up_over()  # gc was off for it (natbox.__main__)
        func: Callable[[argparse.Namespace], int] = args.func
        if args.command not in _UNSUPERVISED:
            _supervise()
        return func(args)
    except NatboxError as exc:
        print(exc.one_line(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("natbox: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so on one line; NATBOX_DEBUG=1 shows the traceback
        if os.environ.get("NATBOX_DEBUG"):
            raise
        print(
            f"natbox: internal error: {type(exc).__name__}: {exc} "
            "(hint: this is a bug; rerun with NATBOX_DEBUG=1 and report the traceback)",
            file=sys.stderr,
        )
        return 70
    finally:
        prefetch.discard()  # a command that failed before its read leaves no save running
