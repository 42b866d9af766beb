"""Provides `natbox apply FILE`: the wanted forwards in a file, made true in the kernel.

The file is the saved set's schema (forwards.json: `{"version": 1, "forwards": [...]}`) or the same
in TOML (`[[forwards]]` tables, read with the standard library's tomllib). YAML is not read: it would
add a runtime dependency, and YAML 1.1 turns `listen: 22:22` into the number 1342 (sexagesimal),
the kind of silent change a firewall file must not have; Ansible users keep their forwards in YAML
vars and the role hands them to natbox as JSON.

Every error in a file is one line naming the file, the line and the field, and nothing is touched.
Then natbox compares the file with the kernel (converge.plan_change), diagnoses what would be added
(checks.preflight), and commits the whole difference as one transaction (converge.execute), inside
the same confirm window as `natbox add`.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import stat
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from json import decoder as json_decoder
from json import scanner as json_scanner
from typing import Any

from natbox import converge, txn, watchdog
from natbox.backends import Backend
from natbox.checks import ERROR, Finding, preflight
from natbox.errors import NatboxError, ValidationError
from natbox.facts import box_facts, gather_facts
from natbox.model import (
    PROTOS,
    Chain,
    Endpoint,
    Forward,
    IPAddress,
    IPNetwork,
    Rule,
    Ruleset,
    Table,
    name_problem,
    parse_cidr,
    parse_ip,
)
from natbox.paths import StateWriteError
from natbox.ruleset import ForwardState
from natbox.runner import Runner
from natbox.system import ip_forward_enabled, route_to

FIELDS = (
    "name",
    "proto",
    "listen",
    "backend",
    "snat",
    "masquerade",
    "mss_clamp",
    "local",
    "sources",
)
_HINT = "fix the file; nothing was changed"


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class Entry:
    """One wanted forward and the line of the file it starts on."""

    forward: Forward
    line: int
    snat_derived: bool = False


@dataclass
class Wanted:
    """The forwards a file asks for, in file order."""

    source: str
    entries: list[Entry] = field(default_factory=list)

    @property
    def forwards(self) -> list[Forward]:
        """The forwards, in file order."""
        return [e.forward for e in self.entries]


# The pure-Python scanner and object parser (typeshed does not list them).
_JSON_OBJECT: Callable[..., tuple[Any, int]] = getattr(json_decoder, "JSONObject")  # noqa: B009
_PY_SCANNER: Callable[[json.JSONDecoder], Any] = getattr(json_scanner, "py_make_scanner")  # noqa: B009


class _SpanDecoder(json.JSONDecoder):
    """json with the text span of every object, so errors can name a line (the C scanner cannot)."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: dict[int, tuple[int, int]] = {}
        self.keep: list[object] = []

        def parse_object(s_and_end: tuple[str, int], *rest: Any) -> tuple[Any, int]:
            start = s_and_end[1] - 1
            obj, end = _JSON_OBJECT(s_and_end, *rest)
            self.spans[id(obj)] = (start, end)
            self.keep.append(obj)  # ids stay unique while the objects live
            return obj, end

        self.parse_object = parse_object
        self.scan_once = _PY_SCANNER(self)


@dataclass
class _Where:
    """Finds lines in the file's text: where a forward starts and where one of its fields is."""

    path: str
    text: str
    spans: list[tuple[int, int] | None]
    kind: str

    def line_at(self, offset: int) -> int:
        return self.text.count("\n", 0, offset) + 1

    def forward_line(self, i: int) -> int | None:
        span = self.spans[i] if i < len(self.spans) else None
        return self.line_at(span[0]) if span else None

    def field_line(self, i: int, name: str) -> int | None:
        span = self.spans[i] if i < len(self.spans) else None
        if span is None:
            return None
        if self.kind == "json":
            pattern = rf'(?<!\\)"{re.escape(name)}"\s*:'
        else:
            pattern = rf'(?m)^[ \t]*"?{re.escape(name)}"?[ \t]*='
        m = re.compile(pattern).search(self.text, span[0], span[1])
        return self.line_at(m.start()) if m else self.forward_line(i)

    def error(
        self, i: int | None, name: str | None, message: str, hint: str = _HINT
    ) -> NatboxError:
        line = None
        if i is not None:
            line = self.field_line(i, name) if name else self.forward_line(i)
        where = f"{self.path} line {line}" if line else self.path
        if line is None and i is not None:
            where += f" forward {i + 1}"
        what = f"field {name}: " if name else ""
        return NatboxError(f"{where}: {what}{message}", hint)


def _toml_spans(text: str) -> list[tuple[int, int] | None]:
    """The span of each `[[forwards]]` table, in order (up to the next table header)."""
    heads = [m.start() for m in re.finditer(r"(?m)^[ \t]*\[\[[ \t]*forwards[ \t]*\]\]", text)]
    others = [m.start() for m in re.finditer(r"(?m)^[ \t]*\[", text)]
    spans: list[tuple[int, int] | None] = []
    for start in heads:
        end = min((o for o in others if o > start), default=len(text))
        spans.append((start, end))
    return spans


def _parse_text(path: str, text: str) -> tuple[list[Any], _Where]:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")) and not stripped.startswith("[["):
        dec = _SpanDecoder()
        try:
            data = dec.decode(text)
        except json.JSONDecodeError as exc:
            raise NatboxError(f"{path} line {exc.lineno}: {exc.msg}", _HINT) from None
        kind = "json"
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"line (\d+)", str(exc))
            at = f"{path} line {m.group(1)}" if m else path
            raise NatboxError(
                f"{at}: {str(exc).split(' (at line')[0]} (TOML)",
                "JSON files start with {; anything else is read as TOML",
            ) from None
        kind = "toml"
    where = _Where(path, text, [], kind)
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        unknown = sorted(set(data) - {"version", "forwards"})
        if unknown:
            raise where.error(None, None, f"unknown top-level key {unknown[0]!r}", _expect(kind))
        version = data.get("version", 1)
        if version != 1:
            raise where.error(None, None, f"version {version!r} is not 1", "natbox reads version 1")
        items = data.get("forwards", [])
        if not isinstance(items, list):
            raise where.error(None, None, '"forwards" is not a list', _expect(kind))
    else:
        raise where.error(None, None, "is not a forwards file", _expect(kind))
    if kind == "json":
        where.spans = [dec.spans.get(id(item)) for item in items]
    else:
        where.spans = list(_toml_spans(text))
    return items, where


def _expect(kind: str) -> str:
    if kind == "toml":
        return "write version = 1 and one [[forwards]] table per forward"
    return 'write {"version": 1, "forwards": [{"name": ..., "listen": ..., ...}]}'


def _closest(name: str) -> str:
    near = difflib.get_close_matches(name, FIELDS, n=1)
    return f"did you mean {near[0]!r}?" if near else f"the fields are {', '.join(FIELDS)}"


def _one(
    item: object, i: int, where: _Where, route: Callable[[IPAddress], IPAddress | None]
) -> Entry:
    if not isinstance(item, dict):
        raise where.error(i, None, "a forward must be a table of fields", _expect(where.kind))
    for key in item:
        if key not in FIELDS:
            raise where.error(i, str(key), "unknown field", _closest(str(key)))

    def text(key: str, required: bool, example: str) -> str | None:
        value = item.get(key)
        if value is None:
            if required:
                raise where.error(i, None, f"field {key} is missing", f"add {key} = {example}")
            return None
        if not isinstance(value, str):
            raise where.error(i, key, f"{value!r} is not a string", f"write it as {example}")
        return value

    def flag(key: str) -> bool:
        value = item.get(key, False)
        if not isinstance(value, bool):
            raise where.error(i, key, f"{value!r} is not true or false", "write true or false")
        return value

    def check(key: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ValidationError as exc:
            raise where.error(i, key, exc.message, exc.hint or _HINT) from None

    name = text("name", True, '"web"')
    assert name is not None
    problem = name_problem(name)
    if problem:
        raise where.error(i, "name", problem.split(": ", 1)[-1], "like web or ssh-jump")
    proto = text("proto", False, '"tcp"') or "tcp"
    if proto not in PROTOS:
        raise where.error(i, "proto", f"{proto!r} is not one of tcp, udp, both", 'write "tcp"')
    listen_text = text("listen", True, '"192.168.1.30:1234"')
    backend_text = text("backend", True, '"10.0.2.50:80"')
    assert listen_text is not None and backend_text is not None
    listen = check("listen", lambda: Endpoint.parse(listen_text, "listen address"))
    backend = check("backend", lambda: Endpoint.parse(backend_text, "backend"))
    snat_text = text("snat", False, '"10.0.2.40"')
    snat: IPAddress | None = (
        check("snat", lambda: parse_ip(snat_text, "SNAT source")) if snat_text else None
    )
    masquerade, mss, local = flag("masquerade"), flag("mss_clamp"), flag("local")
    raw_sources = item.get("sources", [])
    if not isinstance(raw_sources, list) or not all(isinstance(s, str) for s in raw_sources):
        raise where.error(i, "sources", "is not a list of networks", 'write ["192.168.1.0/24"]')
    sources: list[IPNetwork] = []
    for raw in raw_sources:
        try:
            sources.append(parse_cidr(raw))
        except ValidationError as exc:
            raise where.error(i, "sources", exc.message, exc.hint or _HINT) from None
    derived = False
    if snat is None and not masquerade:
        # As `natbox add` does: the address the kernel would use to reach the backend.
        try:
            snat = route(backend.ip)
        except NatboxError as exc:
            raise where.error(
                i, "backend", f"no SNAT source: {exc.message}", "give snat, or masquerade = true"
            ) from None
        if snat is None:
            raise where.error(
                i, "backend", f"the route to {backend.ip} has no source address", "give snat"
            )
        derived = True
    try:
        fwd = Forward(name, proto, listen, backend, snat, masquerade, mss, tuple(sources), local)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise where.error(i, _field_of(exc.message), exc.message, exc.hint or _HINT) from None
    return Entry(fwd, where.forward_line(i) or 0, derived)


def _field_of(message: str) -> str | None:
    """Which field a cross-field problem is about (for the line number)."""
    for words, key in (
        ("SNAT", "snat"),
        ("masquerade", "masquerade"),
        ("MSS", "mss_clamp"),
        ("client network", "sources"),
        ("backend", "backend"),
        ("listen", "listen"),
    ):
        if words in message:
            return key
    return None


def _route_src(runner: Runner | None) -> Callable[[IPAddress], IPAddress | None]:
    def lookup(ip: IPAddress) -> IPAddress | None:
        return route_to(ip, runner).src

    return lookup


MAX_FILE = 16 * 1024 * 1024


def _read_file(path: str) -> str:
    """A forwards file's text: a regular file of bounded size (a FIFO or /dev/zero never hangs)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise NatboxError(f"{path} does not exist", "give the path of a forwards file") from None
    except PermissionError:
        raise NatboxError(f"cannot read {path}", "run natbox with sudo") from None
    except OSError as exc:
        raise NatboxError(f"cannot read {path}: {exc.strerror}", "give a text file") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NatboxError(f"{path} is not a regular file", "give the path of a forwards file")
        with os.fdopen(os.dup(fd), "rb") as fh:
            raw = fh.read(MAX_FILE + 1)
    finally:
        os.close(fd)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NatboxError(f"{path} is not UTF-8 text", "give a text file") from None


def load(
    path: str,
    text: str | None = None,
    *,
    route: Callable[[IPAddress], IPAddress | None] | None = None,
) -> Wanted:
    """Read and validate a forwards file (`-`: stdin); one error naming file, line and field."""
    if text is None:
        if path == "-":
            text = sys.stdin.read(MAX_FILE + 1)
        else:
            text = _read_file(path)
        if len(text) > MAX_FILE:
            raise NatboxError(f"{path} is larger than natbox reads ({MAX_FILE} bytes)", "check it")
    source = "stdin" if path == "-" else path
    items, where = _parse_text(source, text)
    wanted = Wanted(source)
    lookup = route or _route_src(None)
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        entry = _one(item, i, where, lookup)
        fwd = entry.forward
        if fwd.name in seen:
            raise where.error(
                i, "name", f"forward {fwd.name} is there twice", f"line {seen[fwd.name]} has it too"
            )
        for other in wanted.entries:
            if _overlap(other.forward, fwd):
                raise where.error(
                    i,
                    "listen",
                    f"{fwd.listen} overlaps forward {other.forward.name} (line {other.line})",
                    "one listen address:port per protocol",
                )
        seen[fwd.name] = entry.line
        wanted.entries.append(entry)
    return wanted


def _overlap(a: Forward, b: Forward) -> bool:
    return (
        a.listen.ip == b.listen.ip
        and bool(set(a.protocols) & set(b.protocols))
        and a.listen.port <= b.listen.port_end
        and b.listen.port <= a.listen.port_end
    )


# ---------------------------------------------------------------- comparing and rendering


@dataclass
class Report:
    """What apply did (or, with --check, would do)."""

    source: str
    backend: str
    change: converge.Change
    kept: list[str] = field(default_factory=list)
    """natbox forwards in the kernel but not in the file (left alone without --prune)."""
    findings: dict[str, list[Finding]] = field(default_factory=dict)
    check: bool = False
    applied: bool = False
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        """Whether the kernel was (or would be) changed."""
        return self.change.changed

    def to_dict(self, diff: bool = False) -> dict[str, object]:
        """The stable JSON report."""
        c = self.change
        doc: dict[str, object] = {
            "changed": self.changed,
            "check": self.check,
            "file": self.source,
            "backend": self.backend,
            "added": [f.to_dict() for f in c.added],
            "replaced": [
                {
                    "name": new.name,
                    "from": old.forward.to_dict() if old.forward else None,
                    "to": new.to_dict(),
                    "problems": old.problems,
                }
                for old, new in c.replaced
            ],
            "removed": [s.forward.to_dict() if s.forward else {"name": s.name} for s in c.removed],
            "unchanged": [f.name for f in c.unchanged],
            "kept": self.kept,
            "repairs": c.repairs,
            "findings": [
                {"forward": name, **f.to_dict()} for name, fs in self.findings.items() for f in fs
            ],
            "lines": unit_lines(c),
            "notes": self.notes,
            "seconds": round(self.seconds, 4),
        }
        if diff:
            doc["diff"] = save_diff(c)
        return doc


def unit_lines(change: converge.Change) -> dict[str, dict[str, list[str]]]:
    """The restore lines per IP version and table: {"ipv4": {"filter": [...], "nat": [...]}}."""
    out: dict[str, dict[str, list[str]]] = {}
    for u in change.units:
        out.setdefault(f"ipv{u.family}", {})[u.table] = list(u.lines)
    return out


def describe(f: Forward) -> str:
    """A forward on one line: `tcp 192.168.1.30:1234 → 10.0.2.50:80  snat 10.0.2.40`."""
    snat = "masquerade" if f.masquerade else f"snat {f.snat}"
    opts = "".join(f" {o}" for o, on in (("mss-clamp", f.mss_clamp), ("local", f.local)) if on)
    src = f" from {','.join(n.with_prefixlen for n in f.sources)}" if f.sources else ""
    return f"{f.proto} {f.listen} → {f.backend}  {snat}{opts}{src}"


def what_changed(old: ForwardState, new: Forward) -> str:
    """What differs between a forward in the kernel and what it becomes, field by field."""
    if old.forward is None or not old.intact:
        return "broken in the kernel: " + (old.problems[0] if old.problems else "?")
    return field_changes(old.forward, new)


def field_changes(old: Forward, new: Forward) -> str:
    """`backend 10.0.2.50:80 → 10.0.2.51:80, name web → site`."""
    a, b = old.to_dict(), new.to_dict()
    parts = [f"{k} {_show(a[k])} → {_show(b[k])}" for k in b if a.get(k) != b[k]]
    return ", ".join(parts) or "IP version"


def _show(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "any"
    return str(value)


def render(report: Report, *, diff: bool = False, drift: bool = False) -> list[str]:
    """The plan (or what was done) in plain text."""
    c = report.change
    verb = "would" if report.check else "did"
    out: list[str] = []
    counts = (
        f"{len(c.added)} to add, {len(c.replaced)} to replace, {len(c.removed)} to remove, "
        f"{len(c.unchanged)} unchanged"
    )
    out.append(f"natbox apply {report.source} via {report.backend}: {counts}")
    for f in c.added:
        label = "missing" if drift else "add"
        out.append(f"  + {f.name:<16} {label:<8} {describe(f)}")
    for old, new in c.replaced:
        label = "drifted" if drift else "replace"
        out.append(f"  ~ {new.name:<16} {label:<8} {what_changed(old, new)}")
    for s in c.removed:
        desc = describe(s.forward) if s.forward else "broken"
        out.append(f"  - {s.name:<16} {'remove':<8} {desc}")
    for f in c.unchanged:
        out.append(f"  = {f.name:<16} {'ok':<8} {describe(f)}")
    for name in report.kept:
        out.append(f"    {name:<16} {'kept':<8} not in the file (--prune removes it)")
    for r in c.repairs:
        out.append(f"  ! {r}")
    out.extend(render_findings(report.findings))
    if c.units:
        out.append(f"{'rules natbox ' + verb + ' commit' if not drift else 'the fix commits'}:")
        out.extend(render_units(c))
    if diff and c.units:
        out.append(save_diff(c).rstrip("\n"))
    if not c.units:
        out.append("nothing to change: the kernel matches the file")
    out.extend(f"note: {n}" for n in report.notes)
    return out


def render_findings(findings: dict[str, list[Finding]]) -> list[str]:
    """Preflight findings per forward, each with its fix."""
    out: list[str] = []
    for name, found in findings.items():
        for finding in found:
            out.append(f"  {finding.severity:<8} {name}: {finding.message}")
            if finding.severity != "info":
                out.append(f"  {'':<8} fix: {finding.fix}")
    return out


def render_units(change: converge.Change) -> list[str]:
    """The restore lines of a change, table by table, as the plan shows them."""
    out: list[str] = []
    for u in change.units:
        out.append(f"  *{u.table} (IPv{u.family})")
        out.extend(f"  {line}" for line in u.lines)
    return out


# ---------------------------------------------------------------- iptables-save before/after


def _save_lines(rs: Ruleset, tables: set[str]) -> list[str]:
    out: list[str] = []
    for t in rs.tables.values():
        if t.name not in tables:
            continue
        out.append(f"*{t.name}")
        out.extend(f":{c.name} {c.policy or '-'}" for c in t.chains.values())
        out.extend(r.text for c in t.chains.values() for r in c.rules)
        out.append("COMMIT")
    return out


def simulate(rs: Ruleset, table: str, lines: tuple[str, ...]) -> None:
    """Apply restore lines to a parsed ruleset, as --noflush would (for the after-view of --diff)."""
    t = rs.tables.setdefault(table, Table(table))
    for line in lines:
        if line.startswith(":"):
            name = line[1:].split()[0]
            t.chains.setdefault(name, Chain(name))
            continue
        op, _, tail = line.partition(" ")
        chain_name, _, rest = tail.partition(" ")
        if op == "-N":
            t.chains.setdefault(chain_name, Chain(chain_name))
            continue
        if op == "-X":
            t.chains.pop(chain_name, None)
            continue
        chain = t.chains.setdefault(chain_name, Chain(chain_name, "ACCEPT"))
        if op == "-I":
            pos, spec = rest.split(" ", 1)
            chain.rules.insert(int(pos) - 1, Rule(table, chain_name, f"-A {chain_name} {spec}"))
        elif op == "-A":
            chain.rules.append(Rule(table, chain_name, f"-A {chain_name} {rest}"))
        elif op == "-D":
            text = f"-A {chain_name} {rest}"
            for i, r in enumerate(chain.rules):
                if r.text == text:
                    del chain.rules[i]
                    break


def save_diff(change: converge.Change) -> str:
    """A unified diff of iptables-save (ip6tables-save) before and after the change."""
    out: list[str] = []
    for fam, rs in sorted(change.before.items()):
        units = [u for u in change.units if u.family == fam]
        if not units:
            continue
        touched = {u.table for u in units}
        after = copy.deepcopy(rs)
        for u in units:
            simulate(after, u.table, u.lines)
        tool = "ip6tables-save" if fam == 6 else "iptables-save"
        out.extend(
            difflib.unified_diff(
                _save_lines(rs, touched),
                _save_lines(after, touched),
                f"{tool} (before)",
                f"{tool} (after)",
                n=1,
                lineterm="",
            )
        )
    return "\n".join(out) + "\n" if out else ""


# ---------------------------------------------------------------- the apply


def target_of(
    wanted: Wanted, change_states: list[ForwardState], prune: bool
) -> tuple[converge.Target, list[str]]:
    """The converge target for a file: its forwards, plus (with prune) every other one absent."""
    target: converge.Target = {f.name: f for f in wanted.forwards}
    kept: list[str] = []
    for s in change_states:
        if s.name not in target:
            if prune:
                target[s.name] = None
            else:
                kept.append(s.name)
    return target, kept


def without(rs: Ruleset, names: set[str]) -> Ruleset:
    """A copy of `rs` without the rules of the forwards `names` (as it is once they are gone)."""
    out = copy.deepcopy(rs)
    for t in out.tables.values():
        for c in t.chains.values():
            c.rules = [r for r in c.rules if r.forward_name not in names]
    return out


def diagnose_change(
    change: converge.Change, other_side: list[str], enable_forwarding: bool
) -> dict[str, list[Finding]]:
    """Preflight for every forward the change adds or replaces, against the ruleset without the
    forwards it removes or replaces (so a forward does not conflict with its own old version)."""
    going = {s.name for s in change.removed} | {old.name for old, _ in change.replaced}
    incoming = [*change.added, *(new for _, new in change.replaced)]
    if not incoming:
        return {}
    box = box_facts(flows=True, only=incoming)
    out: dict[str, list[Finding]] = {}
    for fwd in incoming:
        rs = without(change.before[fwd.family], going)
        # No TCP probe of the backend: --check (Ansible's check mode) must not send a packet, whose
        # connection would move natbox's own counters; `natbox doctor` probes afterwards.
        facts = gather_facts(fwd, other_side=other_side, box=box, probe=False)
        findings = preflight(fwd, rs, facts)
        if enable_forwarding:
            findings = [f for f in findings if f.id != "ip-forward-off"]
        out[fwd.name] = findings
    return out


ROLLBACK_PREFIX = "apply:"


def plan(
    backend: Backend,
    wanted: Wanted,
    *,
    prune: bool = False,
    enable_forwarding: bool = False,
    other_side: list[str] | None = None,
    diagnose: bool = True,
) -> Report:
    """Compare the file with the kernel: what apply would add, replace, remove (reads only)."""
    states = txn.all_forward_states(backend)
    target, kept = target_of(wanted, states, prune)
    change = converge.plan_change(backend, target)
    report = Report(wanted.source, backend.label, change, kept, check=True)
    report.notes.extend(
        f"{name} is disabled: applying the file enables it (natbox enable)"
        for name in change.enable
    )
    if diagnose:
        report.findings = diagnose_change(change, other_side or [], enable_forwarding)
    return report


def blocking(report: Report) -> NatboxError | None:
    """The error that stops this apply (the first preflight error), if any."""
    for name, findings in report.findings.items():
        for f in findings:
            if f.severity == ERROR:
                return NatboxError(
                    f"{name}: {f.message}", f"{f.fix} (or --force); nothing was changed"
                )
    return None


def carry_out(
    backend: Backend,
    report: Report,
    *,
    force: bool = False,
    enable_forwarding: bool = False,
    confirm_seconds: float | None = None,
    backend_choice: str | None = None,
    label: str | None = None,
) -> Report:
    """Commit the planned change as one transaction (in the confirm window if asked, which names
    it `label`: `apply:NAMES` by default)."""
    report.check = False
    change = report.change
    if not change.changed:
        return report
    txn.require_root()
    incoming = [*change.added, *(new for _, new in change.replaced)]
    off = sorted({f.family for f in incoming if not ip_forward_enabled(family=f.family)})
    if off and not enable_forwarding:
        raise NatboxError(
            f"IPv{off[0]} forwarding is off on this box, so nothing would be forwarded",
            "pass --enable-forwarding (turns it on until reboot)",
        )
    blocked = blocking(report)
    if blocked is not None and not force:
        raise blocked
    armed = None
    if confirm_seconds is not None:
        # Armed first: arm() refuses while another change waits, and that change's rollback
        # record must not be overwritten by one that never starts.
        armed = watchdog.arm(
            label or (ROLLBACK_PREFIX + ",".join(change.target()))[:80],
            confirm_seconds,
            backend_choice,
        )
        converge.save_rollback(change)
    try:
        report.seconds = converge.execute(backend, change, keep=confirm_seconds is None)
    except StateWriteError as exc:
        if armed is None or not exc.committed:
            if armed is not None:
                watchdog.disarm(armed)
            raise
        raise StateWriteError(
            exc.message, f"{exc.hint}; {watchdog.STILL_ARMED}", committed=True
        ) from None
    except BaseException:
        if armed is not None:
            watchdog.disarm(armed)
        raise
    report.applied = True
    report.notes.extend(change.notes)
    for fam in off:
        txn.enable_forwarding(family=fam)
        txn.mark_forwarding_enabled()
        key = "net.ipv6.conf.all.forwarding" if fam == 6 else "net.ipv4.ip_forward"
        report.notes.append(f"enabled {key} (until reboot; natbox save keeps it)")
    for fwd in incoming:
        report.notes.extend(txn.flush_flows(fwd, backend.runner))
    if confirm_seconds is not None:
        report.notes.append(
            f"rolled back in {confirm_seconds:g} s unless you run: natbox confirm "
            "(or natbox rollback now)"
        )
    return report
