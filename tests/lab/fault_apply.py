"""Run inside the nat namespace: apply a forward whose nat rules the kernel rejects, report as JSON.

The extra rule (MASQUERADE reached from PREROUTING) parses, so `--test` passes, but the kernel refuses
the nat table at commit, after the filter table has already been committed: the case where natbox must
undo the first table.
"""

from __future__ import annotations

import json
import sys

from natbox import txn
from natbox.backends.detect import choose_backend
from natbox.errors import NatboxError
from natbox.model import Forward
from natbox.plan import Plan, PlannedRule, build_plan


def poisoned(fwd: Forward) -> Plan:
    plan = build_plan(fwd)
    bad = PlannedRule(
        "nat",
        "NATBOX-PREROUTING",
        ("-m", "comment", "--comment", fwd.comment, "-j", "MASQUERADE"),
        "masquerade",
        "bad",
    )
    return Plan(fwd, (*plan.rules, bad))


txn.build_plan = poisoned  # type: ignore[assignment]
backend, _ = choose_backend(sys.argv[1])
fwd = Forward.from_text("192.168.1.30:1234", "10.0.2.50:80", name="web", snat="10.0.2.40")
try:
    txn.apply(backend, fwd)
except NatboxError as exc:
    print(json.dumps({"error": exc.message, "hint": exc.hint}))
else:
    print(json.dumps({"error": None}))
