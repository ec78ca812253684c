"""docs/tables.md, the lake's tables for analysts, names every table and column the lake has."""

from __future__ import annotations

import re
from pathlib import Path

from storage.schemas import SCHEMAS

DOC = Path(__file__).resolve().parents[2] / "docs" / "tables.md"


def test_every_table_and_column_of_the_lake_is_in_the_tables_page():
    text = DOC.read_text()
    sections = dict(re.findall(r"^## `(\w+)`\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S))
    assert set(sections) == set(SCHEMAS)
    for table, schema in SCHEMAS.items():
        documented = re.findall(r"^\| `(\w+)` \|", sections[table], flags=re.M)
        assert documented == schema.names, table
