"""Provides the one place natbox runs external commands: argv lists, never a shell.

Tests swap in a RecordingRunner to see what would run; the preview shows the same argv.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

from natbox.errors import ToolMissingError

# Debian package that provides each tool, for the hint when it is missing.
PACKAGES = {
    "conntrack": "conntrack",
    "ip": "iproute2",
    "sysctl": "procps",
}


@dataclass(frozen=True)
class Result:
    """What a command returned."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether the command exited 0."""
        return self.returncode == 0

    def first_error_line(self) -> str:
        """The most useful single line of the command's complaint."""
        for line in (self.stderr + "\n" + self.stdout).splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "Warning: " not in line:
                return line
        return f"{self.argv[0]} exited {self.returncode}"


class Runner:
    """Runs commands; `prefix` (e.g. `ip netns exec NAME`) is prepended to every argv."""

    def __init__(self, prefix: tuple[str, ...] = (), timeout: float = 60.0) -> None:
        self.prefix = prefix
        self.timeout = timeout

    def run(self, argv: list[str], stdin: str | None = None) -> Result:
        """Run argv to completion and return its result; a missing tool raises ToolMissingError."""
        full = [*self.prefix, *argv]
        try:
            proc = subprocess.run(
                full,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                env={**os.environ, "LC_ALL": "C"},
                check=False,
            )
        except FileNotFoundError:
            tool = argv[0]
            pkg = PACKAGES.get(
                tool, "iptables" if tool.startswith(("iptables", "ip6tables")) else tool
            )
            raise ToolMissingError(f"{tool} is not installed", f"apt-get install {pkg}") from None
        except subprocess.TimeoutExpired:
            raise ToolMissingError(
                f"{argv[0]} did not finish within {self.timeout:.0f} s",
                "is another process holding the xtables lock?",
            ) from None
        return Result(tuple(full), proc.returncode, proc.stdout, proc.stderr)


@dataclass
class RecordingRunner(Runner):
    """A fake for unit tests: records argv and answers from a table of canned results."""

    answers: dict[str, Result] = field(default_factory=dict)
    calls: list[tuple[list[str], str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def run(self, argv: list[str], stdin: str | None = None) -> Result:
        """Record the call; answer with the canned result whose key prefixes the command line."""
        self.calls.append((argv, stdin))
        line = " ".join(argv)
        for key, res in self.answers.items():
            if line.startswith(key):
                return res
        return Result(tuple(argv), 0, "", "")
