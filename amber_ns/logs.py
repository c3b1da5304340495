"""Logging for the agent and the hub: JSON lines or human text, and a redaction guard.

    from amber import logs
    logs.setup(json=None, level=logging.INFO)   # None: JSON unless stderr is a terminal
    log.info("checkpoint committed", extra={"node": "n1", "checkpoint": cid.hex()})

JSON format, one object a line: ``ts`` (UTC, ISO 8601, milliseconds), ``level``,
``logger``, ``msg``, then the context ids passed with ``extra=`` (:data:`CONTEXT_KEYS`:
``node``, ``vault``, ``source``, ``checkpoint``, ``seq``) and ``exc`` for a traceback.
The text format is ``TIME LEVEL LOGGER MESSAGE [key=value ...]``.

Secrets never reach the log: every key, password and token is registered with
:func:`register_secret` where it is loaded, and :class:`RedactingFilter` (installed on
the handler by :func:`setup`) replaces each occurrence — in the message, its
arguments, a traceback or a context field — with ``[redacted]`` before the record is
formatted. Byte secrets are matched in their hex, base64 and ``repr`` spellings too.
"""

from __future__ import annotations

import base64
import json as _json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, TextIO

CONTEXT_KEYS = ("node", "vault", "source", "checkpoint", "seq")
REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 8  # shorter strings would redact ordinary words
FORMATS = ("auto", "json", "text")
QUIET_LOGGERS = {"aiosqlite": logging.WARNING}  # its debug lines echo query results

# --------------------------------------------------------------------------- secrets

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None  # compiled on first use after a change
_stale = False


def _spellings(value: str | bytes) -> set[str]:
    if isinstance(value, str):
        return {value}
    raw = bytes(value)
    out = {
        raw.hex(),
        raw.hex().upper(),
        repr(raw)[2:-1],  # how "%s" % some_bytes shows it
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        raw.decode("latin-1"),
    }
    try:
        out.add(raw.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    return out


def register_secret(*values: str | bytes | None) -> None:
    """Never log these values (keys, passwords, tokens). Safe to call repeatedly."""
    global _stale
    fresh: set[str] = set()
    for value in values:
        if value:
            fresh |= {s for s in _spellings(value) if len(s) >= MIN_SECRET_LENGTH}
    with _lock:
        fresh -= _secrets
        if fresh:
            _secrets.update(fresh)
            _stale = True  # compiling the pattern waits for the first log record


def _current() -> re.Pattern[str] | None:
    global _pattern, _stale
    if _stale:
        with _lock:
            if _stale:
                ordered = sorted(_secrets, key=len, reverse=True)  # longest spelling wins
                _pattern = re.compile("|".join(map(re.escape, ordered)))
                _stale = False
    return _pattern


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[redacted]``."""
    pattern = _current()
    if pattern is None or not text:
        return text
    return pattern.sub(REDACTED, text)


def forget_secrets() -> None:
    """Clear the registry (tests only)."""
    global _pattern, _stale
    with _lock:
        _secrets.clear()
        _pattern, _stale = None, False


class RedactingFilter(logging.Filter):
    """Rewrites a record so no registered secret is emitted; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _current() is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the raw parts, redacted
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key in CONTEXT_KEYS:
            value = record.__dict__.get(key)
            if isinstance(value, str):
                record.__dict__[key] = redact(value)
        return True


# --------------------------------------------------------------------------- formats


def _context(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in CONTEXT_KEYS:
        value = record.__dict__.get(key)
        if value is None:
            continue
        if isinstance(value, bytes | bytearray):
            value = bytes(value).hex()
        elif isinstance(value, list | tuple | set | frozenset):
            value = ",".join(map(str, value))
        elif not isinstance(value, str | int | float | bool):
            value = str(value)
        out[key] = value
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object a line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        obj: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        obj.update(_context(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            obj["exc"] = record.exc_text
        if record.stack_info:
            obj["stack"] = record.stack_info
        return _json.dumps(obj, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER MESSAGE [key=value ...]`` for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ctx = _context(record)
        if not ctx:
            return text
        line, nl, rest = text.partition("\n")
        tags = " ".join(f"{k}={v}" for k, v in ctx.items())
        return f"{line} [{tags}]{nl}{rest}"


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__/setStream
        pass


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def parse_format(text: str | None) -> bool | None:
    """``--log-format`` to :func:`setup`'s ``json`` argument."""
    if text in (None, "auto"):
        return None
    if text == "json":
        return True
    if text == "text":
        return False
    raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {text!r}")


def add_arguments(parser: Any) -> None:
    """``--log-format`` for an argparse parser (``-v`` stays the CLI's own)."""
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="auto",
        help="logs on stderr: json lines, text, or auto (text on a terminal, else json)",
    )


def setup(json: bool | None = None, level: int | str = logging.INFO) -> logging.Handler:
    """Log to stderr as JSON lines (``json=True``), text (False) or by terminal (None).

    Replaces the handler an earlier call installed; other handlers stay, after it.
    """
    use_json = (not _is_terminal(sys.stderr)) if json is None else json
    root = logging.getLogger()
    handler = StderrHandler()
    handler._amber = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(RedactingFilter())
    # Ours goes first: its filter rewrites each record in place, so any other handler
    # (an embedding application's, a test's) sees only the redacted record.
    others = list(root.handlers)
    for old in others:
        root.removeHandler(old)
    root.addHandler(handler)
    for other in others:
        if not getattr(other, "_amber", False):
            root.addHandler(other)
    root.setLevel(level)
    for name, floor in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(floor)
    logging.captureWarnings(True)  # Python warnings become records in the same format
    return handler


def secret_spellings(values: Iterable[str | bytes]) -> set[str]:
    """Every form :func:`register_secret` would match (for tests that grep logs)."""
    out: set[str] = set()
    for v in values:
        out |= {s for s in _spellings(v) if len(s) >= MIN_SECRET_LENGTH}
    return out
