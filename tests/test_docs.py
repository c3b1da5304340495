"""The docs say what the code does, wherever checking that is cheap.

docs/PROTOCOL.md: every wire message and its fields, the limits table, the stream and
consumer settings, the error codes, the enrolment and permission examples.
docs/FORMAT.md, "Journal": the schema verbatim, every table, the meta keys, the states.
All docs: every `amber-agent` and `amber-hub` command is mentioned somewhere, and
cross-references between docs point at sections that exist.
(docs/ERRORS.md has its own test, tests/protocol/test_errors_doc.py.)
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amber.protocol import errors, wire

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ROW = re.compile(r"^\|(.+)\|\s*$")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The text under the heading ``heading`` (whole, or its first words: ``"## 3."``), up to
    the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.rstrip() == heading or line.startswith(heading + " "):
            end = next(
                (j for j in range(i + 1, len(lines)) if re.match(rf"#{{1,{level}}} ", lines[j])),
                len(lines),
            )
            return "\n".join(lines[i + 1 : end])
    raise AssertionError(f"no heading starting with {heading!r}")


def table_rows(text: str) -> list[list[str]]:
    """Cells of every Markdown table body row in ``text`` (header and separator left out)."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        m = ROW.match(line.strip())
        if not m:
            continue
        if set(m.group(1)) <= set("-| :"):
            rows.pop()  # the row above a separator is the table's header
        else:
            rows.append([cell.strip() for cell in m.group(1).split("|")])
    return rows


def keyed_rows(text: str) -> dict[str, list[str]]:
    """Table rows whose first cell is one `backticked` word, by that word."""
    out: dict[str, list[str]] = {}
    for cells in table_rows(text):
        m = re.fullmatch(r"`([^`]+)`", cells[0])
        if m:
            out[m.group(1)] = cells[1:]
    return out


def code_block(text: str, lang: str, after: str) -> str:
    """The first ```lang fenced block following the line containing ``after``."""
    start = text.index(after)
    m = re.compile(rf"```{lang}\n(.*?)\n```", re.S).search(text, start)
    assert m, f"no {lang} block after {after!r}"
    return m.group(1)


def matches(cell: str, expected: Any) -> bool:
    """Whether a table cell states ``expected`` (numbers: the cell's first number)."""
    if isinstance(expected, enum.Enum):
        expected = expected.value
    if isinstance(expected, list | tuple):
        return all(matches(cell, item) for item in expected)
    if isinstance(expected, str):
        return f"`{expected}`" in cell
    found = NUMBER.search(cell)
    return found is not None and float(found.group()) == float(expected)


def resolve(dotted: str) -> Any:
    """``amber.agent.sources.chunking.MODEL_CDC.max_size`` → its value."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"cannot resolve {dotted}")


# --- PROTOCOL.md: messages ---------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(wire.MESSAGES))
def test_every_wire_message_and_field_is_documented(kind: str) -> None:
    text = section(read("PROTOCOL.md"), f"### `{kind}`")
    cls = wire.MESSAGES[kind]
    rows = keyed_rows(text)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        assert f.name in rows, f"PROTOCOL.md, message {kind}: no row for field `{f.name}`"
    extra = set(rows) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    assert not extra, f"PROTOCOL.md, message {kind}: fields the code lacks: {sorted(extra)}"


def test_protocol_documents_no_message_the_code_lacks() -> None:
    documented = re.findall(r"^### `([^`]+)`", section(read("PROTOCOL.md"), "## 4."), re.M)
    assert documented, "PROTOCOL.md §4 lists no messages"
    assert not set(documented) - set(wire.MESSAGES)


def test_error_codes_are_error_classes() -> None:
    codes = keyed_rows(section(read("PROTOCOL.md"), "## 5."))
    known = {cls.__name__ for cls in errors.ALL_ERRORS} | {"internal"}
    assert codes and set(codes) <= known, sorted(set(codes) - known)


def test_limits_table_matches_the_code() -> None:
    checked = 0
    for cells in table_rows(section(read("PROTOCOL.md"), "## 10.")):
        m = re.fullmatch(r"`(amber\.[\w.]+)`", cells[-1])
        if m:
            value = resolve(m.group(1))
            assert matches(cells[1], value), f"PROTOCOL.md §10: {m.group(1)} is {value!r}"
            checked += 1
    assert checked >= 8


# --- PROTOCOL.md: stream, consumer, subscriptions -----------------------------------


class _FakeSub:
    async def unsubscribe(self) -> None:
        pass


class _FakeNats:
    """Records what the hub's service asks of NATS and JetStream when it starts."""

    def __init__(self) -> None:
        self.streams: list[Any] = []
        self.pulls: list[tuple[str, dict[str, Any]]] = []
        self.subs: list[tuple[str, str]] = []

    def jetstream(self, **_: Any) -> _FakeNats:
        return self

    async def add_stream(self, cfg: Any) -> None:
        self.streams.append(cfg)

    async def pull_subscribe(self, subject: str, **kw: Any) -> object:
        self.pulls.append((subject, kw))
        return object()

    async def subscribe(self, subject: str, queue: str = "", **_: Any) -> _FakeSub:
        self.subs.append((subject, queue))
        return _FakeSub()


async def test_stream_and_consumer_settings_match_the_code() -> None:
    from amber.hub.ingest_stream import IngestStream
    from amber.hub.nodeapi import NodeApi

    nc = _FakeNats()
    for part in (IngestStream(nc, None, None, workers=0), NodeApi(nc, None, None)):
        await part.start()
        await part.stop()
    (stream,) = nc.streams
    ((subject, kw),) = nc.pulls
    consumer = kw["config"]
    expected = {
        "name": stream.name,
        "subjects": stream.subjects,
        "retention": stream.retention,
        "storage": stream.storage,
        "max_msg_size": stream.max_msg_size,
        "duplicate_window": stream.duplicate_window,
        "durable_name": kw["durable"],
        "filter_subject": subject,
        "ack_policy": consumer.ack_policy,
        "ack_wait": consumer.ack_wait,
        "max_ack_pending": consumer.max_ack_pending,
        "max_deliver": consumer.max_deliver,
    }
    text = read("PROTOCOL.md")
    rows = keyed_rows(section(text, "## 3."))
    for key, value in expected.items():
        assert key in rows, f"PROTOCOL.md §3 has no row for `{key}`"
        assert matches(rows[key][0], value), f"PROTOCOL.md §3: `{key}` is {value!r}"
    assert kw["stream"] == stream.name
    for _, queue in nc.subs:
        if queue:
            assert f"queue group `{queue}`" in section(text, "## 2.")


# --- PROTOCOL.md: enrolment and permissions -----------------------------------------


def test_enrolment_example_is_a_valid_enrolment() -> None:
    enrolment = pytest.importorskip("amber.agent.enrolment")
    text = section(read("PROTOCOL.md"), "## 12.")
    example = code_block(text, "json", "The file is UTF-8 JSON")
    enr = enrolment.parse_enrolment(example.encode(), "PROTOCOL.md")
    assert enr.inbox_prefix == f"_INBOX_{enr.vault}.{enr.node}"
    obj = json.loads(example)
    assert obj["format"] == enrolment.FORMAT and obj["version"] == enrolment.VERSION
    assert set(obj) == set(keyed_rows(text)), "the example and the field table differ"


def test_permission_example_matches_the_code() -> None:
    natsbox = pytest.importorskip("amber.hub.natsbox")
    text = section(read("PROTOCOL.md"), "## 12.")
    example = json.loads(code_block(text, "json", "**Node permissions.**"))
    assert example == natsbox.node_permissions("fleet1", "edge-7")


# --- FORMAT.md: journal -------------------------------------------------------------


def journal_section() -> str:
    return section(read("FORMAT.md"), "## 14. Journal")


def test_journal_schema_is_documented_verbatim() -> None:
    journal = pytest.importorskip("amber.agent.journal")
    documented = code_block(journal_section(), "sql", "**Schema**")
    assert documented.strip() == journal.SCHEMA.strip()


def test_every_journal_table_is_described() -> None:
    journal = pytest.importorskip("amber.agent.journal")
    text = journal_section()
    tables = re.findall(r"CREATE TABLE (\w+)", journal.SCHEMA)
    assert tables
    for table in tables:
        assert f"**`{table}`**" in text, f"FORMAT.md §14 does not describe table {table}"


def test_journal_settings_and_states_match_the_code() -> None:
    journal = pytest.importorskip("amber.agent.journal")
    text = journal_section()
    assert f"PRAGMA page_size={journal.PAGE_SIZE}" in text
    states = {cells[0]: cells[1] for cells in table_rows(text) if cells[0].isdigit()}
    for name in ("TENTATIVE", "COMMITTED", "DURABLE"):
        assert states.get(str(getattr(journal, name))) == name.lower()


async def test_journal_meta_rows_are_documented(tmp_path: Path) -> None:
    journal = pytest.importorskip("amber.agent.journal")
    from amber.protocol.keys import VaultKeys

    path = tmp_path / "journal.db"
    j = await journal.Journal.open(path, VaultKeys.generate(), vault="v", node="n", create=True)
    await j.close()
    with sqlite3.connect(path) as con:
        meta = dict(con.execute("SELECT key, value FROM meta"))
    con.close()
    rows = keyed_rows(journal_section())
    for key in meta:
        assert key in rows, f"FORMAT.md §14 has no row for meta key `{key}`"
    assert matches(rows["format"][0], meta["format"])
    assert matches(rows["version"][0], meta["version"])


# --- commands and cross-references --------------------------------------------------


def all_docs() -> str:
    files = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[str]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join((parser.prog.split()[0], *path))
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaf_commands(sub, (*path, name))


def cli_commands() -> list[str]:
    out = []
    for module in ("amber.agent.cli.parser", "amber.hub.cli.parser"):
        try:
            out += list(leaf_commands(importlib.import_module(module).build_parser()))
        except ImportError:
            pass
    return out


def test_every_command_is_mentioned_in_the_docs() -> None:
    text = all_docs()
    commands = cli_commands()
    assert commands
    missing = [c for c in commands if not re.search(re.escape(c) + r"(?![\w-])", text)]
    assert not missing, f"commands no doc mentions: {missing}"


def headings(name: str) -> list[str]:
    return re.findall(r"^#+ (.+)$", read(name), re.M)


def test_cross_references_point_at_existing_sections() -> None:
    text = all_docs()
    bad = []
    for doc, number in re.findall(r"\b(FORMAT|PROTOCOL|SECURITY)\.md,? §(\d+)", text):
        if not any(h.startswith(f"{number}. ") for h in headings(f"{doc}.md")):
            bad.append(f"{doc}.md §{number}")
    for doc, title in re.findall(r'\b([A-Z]+)\.md, "([^"]+)"', text):
        if (DOCS / f"{doc}.md").exists() and not any(title in h for h in headings(f"{doc}.md")):
            bad.append(f'{doc}.md, "{title}"')
    decisions = {int(n) for n in re.findall(r"^## D(\d+)\.", read("DECISIONS.md"), re.M)}
    assert decisions == set(range(1, len(decisions) + 1)), "DECISIONS.md numbering has gaps"
    for refs in re.findall(r"DECISIONS\.md,? ((?:D\d+[–-]?)+)", text):
        bad += [
            f"DECISIONS.md D{n}" for n in re.findall(r"D(\d+)", refs) if int(n) not in decisions
        ]
    assert not bad, f"references to sections that do not exist: {bad}"
