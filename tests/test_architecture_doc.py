"""docs/ARCHITECTURE.md names only modules that exist (the section on coming parts aside)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "ARCHITECTURE.md"
TOPS = ("agent", "hub", "protocol", "amber_ns", "tests", "bench", "packaging")
PATH = re.compile(rf"\b(?:{'|'.join(TOPS)})/[\w/{{}},.]*\w(?:\.py|/)?")
MODULE = re.compile(r"`(amber(?:\.\w+)+)")


def current_text() -> str:
    text = PAGE.read_text(encoding="utf-8")
    return text.split("## Where the coming parts go")[0]


def expand(path: str) -> list[str]:
    """``agent/sources/{files,jsonl}.py`` -> both paths."""
    m = re.search(r"\{([^}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in expand(path.replace(m.group(0), alt))]


def spec_of(name: str) -> object | None:
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:  # a parent is a module, not a package
        return None


def named_paths() -> set[str]:
    return {p for raw in PATH.findall(current_text()) for p in expand(raw)}


def test_the_page_names_paths_and_modules() -> None:
    assert len(named_paths()) > 30
    assert len(MODULE.findall(current_text())) >= 3


def test_every_named_path_exists() -> None:
    missing = sorted(p for p in named_paths() if not (ROOT / p).exists())
    assert not missing, f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"


def test_every_named_module_or_attribute_exists() -> None:
    missing = []
    for dotted in MODULE.findall(current_text()):
        parts = dotted.split(".")
        for cut in range(len(parts), 1, -1):  # the longest importable prefix
            if spec_of(".".join(parts[:cut])) is not None:
                obj = importlib.import_module(".".join(parts[:cut]))
                for attr in parts[cut:]:
                    obj = getattr(obj, attr, None)
                if obj is None:
                    missing.append(dotted)
                break
        else:
            missing.append(dotted)
    assert not missing, f"docs/ARCHITECTURE.md names modules that do not exist: {missing}"


def test_readme_links_the_page_first() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[\w.]+)\)", readme)
    assert links and links[0] == "docs/ARCHITECTURE.md"
