"""The README key tables are typed by hand: these tests keep them equal to the schemas the loaders validate."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = "| key | default | meaning |"


def table_keys(readme: Path) -> set[str]:
    """Keys in the first column of the README's `| key | default | meaning |` table (`a, b` rows name several)."""
    lines = readme.read_text().splitlines()
    start = lines.index(HEADER) + 2
    keys: set[str] = set()
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        keys |= {k.strip().strip("`") for k in line.split("|")[1].split(",") if k.strip()}
    return keys


def paragraph_keys(readme: Path, lead: str) -> set[str]:
    """Backticked names in the paragraph that starts with `lead` (the per-method keys below the table)."""
    text = readme.read_text()
    start = text.index(f"\n{lead}") + 1
    paragraph = text[start:text.index("\n\n", start)]
    return set(re.findall(r"`([a-z_0-9]+)`\s", paragraph))  # a key is followed by its default; values are not


def test_evaluation_readme_lists_exactly_the_config_keys():
    from cellemnet.evaluation.config import SCHEMA

    documented = table_keys(ROOT / "evaluation" / "README.md")
    assert sorted(set(SCHEMA) - documented) == [] and sorted(documented - set(SCHEMA)) == []


def test_pretraining_readme_lists_exactly_the_config_keys():
    from cellemnet.pretraining.config import SCHEMAS

    readme = ROOT / "pretraining" / "README.md"
    common = table_keys(readme)
    moco = common | paragraph_keys(readme, "MoCoV2:")
    swav = common | paragraph_keys(readme, "SwAV:")
    for method, documented in (("mocov2", moco), ("swav", swav)):
        schema = set(SCHEMAS[method])
        assert sorted(schema - documented) == [], method
    # nothing documented that no schema has (a renamed or removed key)
    assert sorted((moco | swav) - set(SCHEMAS["mocov2"]) - set(SCHEMAS["swav"])) == []
