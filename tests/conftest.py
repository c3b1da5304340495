"""Registers tests/support/fixtures.py and marks the tests that need server processes.

Helpers and fixtures live in tests/support/; keep this file thin.
"""

from __future__ import annotations

import pytest

# `tests.support` is importable however pytest is launched: pyproject.toml puts the
# repository root on sys.path (pytest's `pythonpath`). Its asserts are rewritten too.
pytest.register_assert_rewrite("tests.support")
pytest_plugins = ["tests.support.fixtures"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``servers`` every test that uses a real server process fixture (directly or
    through another fixture), so ``make test-fast`` (``-m "not servers"``) skips them. A
    module that starts processes itself says ``pytestmark = pytest.mark.servers``."""
    from tests.support.fixtures import SERVER_FIXTURES

    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)
