"""The errors a plugin raises or sees, and how the SDK writes diagnostics (one clipped line for
pipe, ``pipe_plugin: ...`` lines on stderr)."""

from __future__ import annotations

import sys
from typing import Any


class ConfigError(Exception):
    """A problem with the stage's params or input schema, found before any data moves.

    Raise it from a ``check`` hook, from ``setup``/``schema=`` callables, or from ``fn`` while
    the output schema is being inferred. pipe reports it (``pipe validate`` and ``pipe run``)
    with the stage id and, when ``key`` names a params key, the line of that key in the
    pipeline file.

    :param key: the params key at fault, or ``None``.
    :param message: what is wrong, e.g. ``"must be a non-empty list of strings"``.
    :param hint: optional, what to write instead, e.g. ``'keywords = ["cat"]'``.
    """

    def __init__(self, key: str | None, message: str, hint: str | None = None):
        super().__init__(message)
        self.key = key
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.key}: {self.message}" if self.key else self.message
        return f"{text} (hint: {self.hint})" if self.hint else text


class PluginError(Exception):
    """Raised by :func:`run_batches` for what pipe would report as a failure of the plugin
    (a result whose schema differs from the declared one, for instance)."""


def _clip(text: str, limit: int = 4000) -> str:
    """Keeps messages well under the protocol's 1 MiB header limit, whatever a batch holds."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _exc_line(e: BaseException) -> str:
    text = str(e).strip()
    return _clip(f"{type(e).__name__}: {text}" if text else type(e).__name__)


def _log(*parts: Any) -> None:
    print("pipe_plugin:", *parts, file=sys.stderr, flush=True)
