"""Drift: what changed on disk since a source's last checkpoint, without reading data."""

from __future__ import annotations

import stat
from dataclasses import dataclass

from amber.agent.config import SourceConfig
from amber.agent.journal import Journal
from amber.agent.sources.registry import unpack_state, walk
from amber.agent.sources.sqlite import _stat_key as sqlite_stat
from amber.protocol.errors import SourceError


@dataclass(frozen=True)
class Drift:
    source: str
    state: str  # "unchanged", "changed", "never checkpointed", "missing"
    added: int = 0
    removed: int = 0
    modified: int = 0


async def source_drift(src: SourceConfig, journal: Journal) -> Drift:
    saved = await journal.source_state(src.name)
    if not src.path.exists():
        return Drift(src.name, "missing")
    if saved is None:
        return Drift(src.name, "never checkpointed")
    state = unpack_state(saved[1])
    if src.kind in ("sqlite", "state"):
        same = state.get("stat") == sqlite_stat(src.path)
        return Drift(src.name, "unchanged" if same else "changed", modified=0 if same else 1)
    try:
        now = {rel: st for rel, st in walk(src.path, src.exclude) if stat.S_ISREG(st.st_mode)}
    except SourceError:
        return Drift(src.name, "missing")
    if src.kind == "jsonl" and src.path.is_dir():  # the scanner saves only the logs
        now = {rel: st for rel, st in now.items() if ".jsonl" in rel}
    before = state.get("files", state) if src.kind != "jsonl" else state
    added = len(now.keys() - before.keys())
    removed = len(before.keys() - now.keys())
    modified = sum(
        1 for rel in now.keys() & before.keys() if _differs(src.kind, now[rel], before[rel])
    )
    changed = added or removed or modified
    return Drift(src.name, "changed" if changed else "unchanged", added, removed, modified)


def _differs(kind: str, st: object, saved: object) -> bool:
    if kind == "jsonl" and isinstance(saved, dict):
        return saved.get("size") != st.st_size or saved.get("ino") != st.st_ino  # type: ignore[attr-defined]
    key = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]  # type: ignore[attr-defined]
    return saved != key
