"""Provides the restore backend: iptables-<flavour>-restore --noflush, one transaction per table."""

from __future__ import annotations

from natbox.backends import Backend, lock_busy, lock_wait
from natbox.errors import BackendError


class RestoreBackend(Backend):
    """Writes with iptables-restore; works for nft and legacy alike."""

    name = "restore"

    def commit(self, table: str, lines: list[str]) -> None:
        """Feed one table's lines to iptables-restore; all of them or none land."""
        text = f"*{table}\n" + "".join(line + "\n" for line in lines) + "COMMIT\n"
        argv = [
            self.tool("restore"),
            "--noflush",
            "-w",
            str(max(1, int(lock_wait()))),
        ]
        res = self.runner.run(argv, text)
        if not res.ok:
            lock_busy(res.stderr)
            raise BackendError(
                f"{self.tool('restore')} refused the {table} table: {res.first_error_line()}",
                f"the {table} table was left as it was",
            )
