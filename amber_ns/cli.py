"""The command-line runner both `amber-agent` and `amber-hub` use.

    parser = cli.Parser(prog="amber-hub", epilog=cli.exit_codes_help(), ...)
    ...  # subcommands, each leaf with set_defaults(func=run_something)
    cli.share_options(parser, add_global_options)   # before or after the subcommand
    return cli.run(parser, argv)

What it owns, so the two tools behave the same:

- logging: ``-v`` and ``--log-format`` (:mod:`amber.logs`);
- errors: an :class:`AmberError` is printed as ``error: ...`` / ``hint: ...`` and the
  process exits with the class's code; a malformed argument is a :class:`UsageError`
  naming the option (exit 2); Ctrl-C exits 130; stdout closed early (``| head``) exits
  quietly with 0;
- the exit-code help text, generated from ``ALL_ERRORS`` (docs/ERRORS.md lists the same
  table);
- the argument types: one ``key=value`` parser for labels, lineage and selectors, names,
  counts, paths, URLs and listen addresses, each refusing bad input with a one-line error.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
import textwrap
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar

from amber import logs
from amber.protocol.errors import ALL_ERRORS, AmberError, DiskFullError, UsageError

T = TypeVar("T")
INTERRUPTED = 130  # 128 + SIGINT, as shells report it
KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,62}")
MAX_VALUE = 1024
MAX_COUNT = 1_000_000
MAX_PATH, MAX_NAME = 4096, 255  # Linux's PATH_MAX and NAME_MAX


def out(text: str) -> None:
    """One line on stdout: what a command prints for people and scripts."""
    sys.stdout.write(text + "\n")


def ago(us: int | None) -> str:
    """How long ago a time in microseconds was: ``3d ago``, ``40s ago``; None is never."""
    if us is None:
        return "never"
    secs = max(0, int(time.time() - us / 1e6))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"{secs // n}{unit} ago"
    return f"{secs}s ago"


# --------------------------------------------------------------------------- help text


def exit_codes_help() -> str:
    """The exit-code table for ``--help``, generated from ``ALL_ERRORS``."""
    rows = ["exit codes (docs/ERRORS.md):", "  0    ok"]
    for cls in sorted(ALL_ERRORS, key=lambda c: c.exit_code):
        meaning = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
        rows.append(f"  {cls.exit_code:<4} {cls.__name__}: {meaning}")
    rows.append(f"  {INTERRUPTED:<4} interrupted (Ctrl-C)")
    return "\n".join(rows)


def exit_codes_line() -> str:
    """The same table on one line, for each command's ``--help``."""
    codes = ", ".join(
        f"{c.exit_code} {c.__name__}" for c in sorted(ALL_ERRORS, key=lambda c: c.exit_code)
    )
    text = f"exit codes: 0 ok, {codes}, {INTERRUPTED} interrupted (docs/ERRORS.md)"
    return textwrap.fill(text, width=79)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are :class:`UsageError` (rendered by :func:`run`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("epilog", exit_codes_line())
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", hint=f"run '{self.prog} --help'")


# --------------------------------------------------------------------------- options


def add_logging_options(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    """``-v`` and ``--log-format``; ``suppress`` for the copy on each subcommand."""
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="log debug detail to stderr",
    )
    p.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=argparse.SUPPRESS if suppress else "auto",
        help="logs on stderr: json lines, text, or auto (text on a terminal, else json)",
    )


def leaf_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser of a command that takes no subcommand, depth first."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
    for action in subs:
        for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
            yield from leaf_parsers(sub)


def share_options(
    root: argparse.ArgumentParser, add: Callable[[argparse.ArgumentParser, bool], None]
) -> None:
    """Accept the global options before or after the subcommand (as restic, kubectl do).

    ``add(parser, suppress)`` adds them; on the root with real defaults, on each leaf
    with ``argparse.SUPPRESS`` defaults so a leaf sets them only when given there."""
    add(root, False)
    for leaf in leaf_parsers(root):
        if leaf is not root:
            add(leaf, True)


# --------------------------------------------------------------------------- types


def argtype(name: str, check: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type=`` from a checker raising ValueError or AmberError."""

    def convert(text: str) -> T:
        try:
            return check(text)
        except AmberError as exc:
            why = "" if exc.hint == UsageError.default_hint else f" ({exc.hint})"
            raise argparse.ArgumentTypeError(f"{exc}{why}") from None
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def parse_key_value(text: str) -> tuple[str, str]:
    """``key=value`` -> (key, value): the one parser for labels, lineage and selectors.

    The key is 1-63 letters, digits or ``_.:/-``; the value may hold anything printable
    (an ``=`` too), up to 1024 characters."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r} is not KEY=VALUE")
    if not KEY_RE.fullmatch(key):
        raise ValueError(f"{key!r} in {text!r} is not a key (letters, digits, _.:/-)")
    if len(value) > MAX_VALUE or not value.isprintable():
        raise ValueError(f"the value of {key!r} is longer than {MAX_VALUE} or unprintable")
    return key, value


def parse_key_values(text: str) -> dict[str, str]:
    """``key=value[,key=value...]`` -> a dict (at least one pair)."""
    pairs = [parse_key_value(p.strip()) for p in text.split(",") if p.strip()]
    if not pairs:
        raise ValueError(f"{text!r} holds no KEY=VALUE")
    return dict(pairs)


def merge(pairs: Iterable[tuple[str, str] | dict[str, str]] | None) -> dict[str, str]:
    """Repeated ``key=value`` options as one dict; the last of a key wins."""
    merged: dict[str, str] = {}
    for p in pairs or []:
        merged.update(p if isinstance(p, dict) else [p])
    return merged


def parse_name(text: str) -> str:
    """A vault or node name: it becomes a NATS subject token."""
    from amber.protocol.wire import check_name

    return check_name(text, "a")


def parse_text(text: str) -> str:
    """A non-empty, printable argument (an id, a prefix, a command, a glob)."""
    if not text.strip() or not text.isprintable():
        raise ValueError(f"{text!r} is empty or unprintable")
    return text


def parse_path(text: str) -> str:
    """A filesystem path: not empty, no NUL byte, no name longer than the filesystem
    allows (existence is the command's business)."""
    if not text or "\0" in text:
        raise ValueError(f"{text!r} is not a path")
    if len(text.encode(errors="surrogateescape")) > MAX_PATH or any(
        len(part.encode(errors="surrogateescape")) > MAX_NAME for part in text.split("/")
    ):
        raise ValueError(f"{text[:40]!r}... is longer than a path may be")
    return text


def parse_count(text: str) -> int:
    """A whole number from 0 to 1,000,000."""
    if not re.fullmatch(r"\d{1,7}", text.strip()) or int(text) > MAX_COUNT:
        raise ValueError(f"{text!r} is not a whole number from 0 to {MAX_COUNT:,}")
    return int(text)


def parse_listen(text: str) -> str:
    """``host:port``; port 0 asks for a free one."""
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[\w.-]+):(\d{1,5})", text)
    if not m or int(m.group(2)) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return text


def parse_url(text: str, schemes: Sequence[str]) -> str:
    """A URL with one of ``schemes`` and a host (or path, for ``file``)."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in schemes or not (parts.netloc or parts.path) or not text.isprintable():
        raise ValueError(f"{text!r} is not a {' or '.join(s + '://' for s in schemes)} URL")
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise ValueError(f"{text!r} names no host")
    return text


KEY_VALUE = argtype("KEY=VALUE", parse_key_value)
KEY_VALUES = argtype("KEY=VALUE[,KEY=VALUE]", parse_key_values)
NAME = argtype("name", parse_name)
TEXT = argtype("text", parse_text)
PATH = argtype("path", parse_path)
COUNT = argtype("count", parse_count)
LISTEN = argtype("HOST:PORT", parse_listen)
HTTP_URL = argtype("URL", lambda t: parse_url(t, ("http", "https")))
STORE_URL = argtype("store URL", lambda t: parse_url(t, ("file", "s3")))


# --------------------------------------------------------------------------- running


def _check_argv(argv: Sequence[str]) -> None:
    """A NUL byte cannot reach a real process; refuse it before it reaches a syscall."""
    for i, arg in enumerate(argv):
        if "\0" in arg:
            opt = argv[i - 1] if i and argv[i - 1].startswith("-") else f"argument {i + 1}"
            raise UsageError(f"{opt}: {arg!r} contains a NUL byte")


def _quiet_stdout() -> None:
    """The reader of stdout left (``| head``): point stdout at /dev/null, so the final
    flush at exit raises nothing."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test's StringIO)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, set up logging and call ``args.func(args)``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _check_argv(argv)
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else 0
        level = logging.DEBUG if args.verbose else logging.INFO
        logs.setup(logs.parse_format(args.log_format), level)
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except AmberError as exc:
        sys.stderr.write(exc.render() + "\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except OSError as exc:  # a path the command could not use, not caught nearer
        err = os_error(exc)
        sys.stderr.write(err.render() + "\n")
        return err.exit_code


def os_error(exc: OSError) -> AmberError:
    """An operating-system error no command turned into an AmberError, as one."""
    where = f" ({exc.filename})" if exc.filename else ""
    text = f"{exc.strerror or exc}{where}"
    if exc.errno == errno.ENOSPC:
        return DiskFullError(text)
    return AmberError(text, hint="check the path named and its permissions, then retry")
