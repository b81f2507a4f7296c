"""docs/validation.md publishes the JSON Schemas of the sweep spec and the measurement
row; they must be the models' own, so the page cannot drift from what is checked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tvwsim.validate.schemas import SCHEMAS

DOC = Path(__file__).resolve().parents[2] / "docs" / "validation.md"


def published(name: str) -> dict:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- schema: {name} -->\n```json\n(.*?)\n```", text, re.DOTALL)
    assert match, f"docs/validation.md has no schema block {name!r}"
    return json.loads(match.group(1))


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_published_schema_is_the_models(name):
    assert published(name) == SCHEMAS[name]()


def test_schemas_name_what_the_checks_enforce():
    spec = SCHEMAS["sweep-spec"]()
    group = spec["$defs"]["GroupTable"]
    assert group["additionalProperties"] is False and spec["additionalProperties"] is False
    assert spec["properties"]["repeats"]["minimum"] == 20
    patterns = group["properties"]["patterns"]["items"]["enum"]
    assert patterns == ["dense", "bw", "vw", "tw", "tvw"]  # kernels only: no ew
    assert set(spec["$defs"]["ConfigTable"]["properties"]) == set(patterns)
    row = SCHEMAS["measurement-row"]()
    assert {"schema", "point", "device", "times_us", "median_us", "max_rel_error"} <= set(
        row["required"]
    )
    assert row["properties"]["times_us"]["minItems"] == 1
