"""Provides OnUse: a module imported when first used, so a command (or the dashboard's first
screen) pays only for the parts it runs. Imports no typing (`natbox list` never loads it)."""

from __future__ import annotations

import importlib
from types import ModuleType

TYPE_CHECKING = False  # not typing's (see above); mypy knows the name
if TYPE_CHECKING:
    from typing import Any


class OnUse(ModuleType):
    """Stands for the module `name` and imports it on the first attribute asked of it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._real: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._real is None:
            self._real = importlib.import_module(self.__name__)
        return getattr(self._real, attr)
