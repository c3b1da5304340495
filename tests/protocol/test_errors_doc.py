"""docs/ERRORS.md lists every error class with the exit code, parent and hint the code has."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from amber.protocol import errors

DOC = Path(__file__).resolve().parents[2] / "docs" / "ERRORS.md"
ROW = re.compile(r"^\|\s*`(\w+)`\s*\|\s*(\d+)\s*\|\s*`(\w+)`\s*\|(.*)\|(.*)\|\s*$")


def doc_rows() -> dict[str, tuple[int, str, str, str]]:
    rows: dict[str, tuple[int, str, str, str]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = ROW.match(line)
        if m:
            name, code, parent, meaning, hint = m.groups()
            assert name not in rows, f"{name} is listed twice in docs/ERRORS.md"
            rows[name] = (int(code), parent, meaning.strip(), hint.strip())
    return rows


def code_row(cls: type[errors.AmberError]) -> tuple[int, str, str, str]:
    parent = cls.__mro__[1].__name__
    meaning = (cls.__doc__ or "").strip().splitlines()[0]
    return cls.exit_code, parent, meaning, cls.default_hint


def markdown_row(cls: type[errors.AmberError]) -> str:
    code, parent, meaning, hint = code_row(cls)
    return f"| `{cls.__name__}` | {code} | `{parent}` | {meaning} | {hint} |"


def test_doc_has_a_table() -> None:
    assert len(doc_rows()) >= 10


@pytest.mark.parametrize("cls", errors.ALL_ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_is_documented_as_it_is(cls: type[errors.AmberError]) -> None:
    rows = doc_rows()
    assert cls.__name__ in rows, f"docs/ERRORS.md lacks the row\n{markdown_row(cls)}"
    assert rows[cls.__name__] == code_row(cls), (
        f"docs/ERRORS.md row for {cls.__name__} differs from the code; it should read\n"
        f"{markdown_row(cls)}"
    )


def test_doc_lists_no_error_the_code_lacks() -> None:
    extra = set(doc_rows()) - {cls.__name__ for cls in errors.ALL_ERRORS}
    assert not extra, f"docs/ERRORS.md lists classes not in ALL_ERRORS: {sorted(extra)}"


def test_exit_codes_are_unique() -> None:
    seen: dict[int, str] = {}
    for cls in errors.ALL_ERRORS:
        assert cls.exit_code not in seen, (
            f"{cls.__name__} reuses exit code {cls.exit_code} of {seen[cls.exit_code]}"
        )
        seen[cls.exit_code] = cls.__name__
    doc_codes = [code for code, *_ in doc_rows().values()]
    assert len(doc_codes) == len(set(doc_codes))


def test_all_errors_lists_every_class_in_the_module() -> None:
    defined = {
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, errors.AmberError) and obj.__module__ == errors.__name__
    }
    assert defined == set(errors.ALL_ERRORS)
    assert len(errors.ALL_ERRORS) == len(set(errors.ALL_ERRORS))


@pytest.mark.parametrize("cls", errors.ALL_ERRORS, ids=lambda cls: cls.__name__)
def test_exit_codes_fit_a_process_exit_status(cls: type[errors.AmberError]) -> None:
    assert 1 <= cls.exit_code <= 125  # 0 is success; 126+ belong to the shell
    assert cls("x").render() == f"error: x\nhint: {cls.default_hint}"
