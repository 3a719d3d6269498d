"""What every switch is given: the client and bitsadmin's output (/RAWRETURN, /WRAP and
/NOWRAP); a BITS error with the action it interrupted; the switch table."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from openbits.client import Client
from openbits.errors import BitsError


class _Failed(Exception):
    """A BITS error with the bitsadmin action it interrupted ("Unable to resume job")."""

    def __init__(self, action: str, error: BitsError) -> None:
        super().__init__(action)
        self.action = action
        self.error = error


def _fit(line: str, width: int | None, wrap: bool) -> list[str]:
    """One output line as a console of ``width`` columns shows it: wrapped onto further lines
    (``/WRAP``, the default) or cut at the edge (``/NOWRAP``); ``width`` None: unchanged."""
    if width is None or width <= 0 or len(line) <= width:
        return [line]
    if not wrap:
        return [line[:width]]
    return [line[i : i + width] for i in range(0, len(line), width)]


@dataclass
class Out:
    """bitsadmin's output: /RAWRETURN values, /WRAP and /NOWRAP on a terminal."""

    raw: bool = False
    wrap: bool | None = None  # None: bitsadmin's default (wrap, except /MONITOR)
    stream: TextIO = field(default_factory=lambda: sys.stdout)

    def _width(self) -> int | None:
        if not self.stream.isatty():
            return None  # no console: lines go out as they are
        import shutil

        return shutil.get_terminal_size().columns

    def line(self, text: str = "", default_wrap: bool = True) -> None:
        wrap = default_wrap if self.wrap is None else self.wrap
        width = self._width()
        for part in text.split("\n"):
            for piece in _fit(part, width, wrap):
                self.stream.write(piece + "\n")

    def value(self, text: str) -> None:
        """The result of /CREATE or /GET*: bare, without a newline, under /RAWRETURN."""
        if self.raw:
            self.stream.write(text)
        else:
            self.line(text)

    def flush(self) -> None:
        self.stream.flush()


@dataclass
class Ctx:
    client: Client
    out: Out

    def call(self, action: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except BitsError as e:
            raise _Failed(action, e) from None


Handler = Callable[[Ctx, list[str]], int]


class SwitchTable(dict[str, Handler]):
    """Switch name → handler; each module of switches fills its own, ``__init__`` joins them."""

    def switch(self, *names: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            for name in names:
                self[name] = fn
            return fn

        return register
