"""The MariaDB/MySQL samples of docs/stores.md: the store built from a URL (without
connecting) and its DDL, included from docs/snippets/mysql/ddl.sql."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pymysql")

# --8<-- [start:mysql-store]
from idempotence.stores import MySQLStore

store = MySQLStore("mysql://app:secret@db:3306/app?table=idempotency")
ddl = store.migration_sql()  # the DDL, for migration tools (then auto_create=False)
# --8<-- [end:mysql-store]

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_ddl_is_the_store_migration() -> None:
    assert (ROOT / "docs" / "snippets" / "mysql" / "ddl.sql").read_text() == ddl


def test_the_docs_include_both_samples() -> None:
    page = (ROOT / "docs" / "stores.md").read_text()
    assert '--8<-- "tests/stores/test_mysql_docs.py:mysql-store"' in page
    assert '--8<-- "docs/snippets/mysql/ddl.sql"' in page


def test_the_example_store_is_configured_from_its_url() -> None:
    assert store.table == "idempotency"
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS `idempotency`")
