"""README.md is the front door: the two set-up commands first, short, self-contained, and every
file it points to exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_readme_opens_with_the_two_commands_and_stays_short():
    first_block = README.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[:2] for line in first_block] == [["make", "demo"], ["make", "test"]]
    assert len(README.splitlines()) <= 120


def test_the_readme_names_no_issue_and_nothing_outside_the_repository():
    assert not re.search(r"\bissues?\s*#?\d", README, flags=re.I)
    assert "../" not in README


def test_every_file_the_readme_and_the_manual_point_to_exists():
    manual = (ROOT / "docs" / "manual.md").read_text()
    named = set(re.findall(r"`((?:docs|bench|deploy)/[\w./-]+\.(?:md|py))`", README))
    named |= {f"docs/{m}" for m in re.findall(r"\]\(([\w-]+\.md)\)", manual)}
    assert named and all((ROOT / path).is_file() for path in named), sorted(p for p in named
                                                                         if not (ROOT / p).is_file())
