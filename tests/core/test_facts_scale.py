"""Doctor at scale: each distinct backend is routed and probed once, whatever the forward count."""

from __future__ import annotations

import threading

import pytest

from natbox import facts
from natbox.model import Forward
from natbox.system import Route


def test_prefetch_probes_and_routes_each_backend_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"route": 0, "probe": 0}
    lock = threading.Lock()

    def fake_route(ip: object, runner: object = None) -> Route:
        with lock:
            calls["route"] += 1
        return Route(ip, "dmz0", None, None)  # type: ignore[arg-type]

    def fake_probe(fwd: Forward, timeout: float = 1.0) -> tuple[bool | None, str]:
        with lock:
            calls["probe"] += 1
        return (fwd.backend.ip.packed[-1] % 10 != 0, "")  # every tenth backend is down

    monkeypatch.setattr(facts, "route_to", fake_route)
    monkeypatch.setattr(facts, "backend_probe", fake_probe)
    forwards = [
        Forward.from_text(
            f"192.168.1.30:{2000 + i}",
            f"10.0.{i % 100 // 50}.{i % 100 + 1}:80",
            name=f"f{i}",
            snat="10.0.2.40",
        )
        for i in range(1000)
    ]
    box = facts.BoxFacts([], frozenset(), {}, [], [])
    facts.prefetch(box, forwards, probe=True)
    assert calls == {"route": 100, "probe": 100}
    answers = [box.probe(f)[0] for f in forwards]
    assert answers.count(False) == 100 and calls["probe"] == 100, "memoised"
