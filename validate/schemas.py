"""The JSON Schemas of validation's two file formats, as docs/validation.md publishes them.

`python -m tvwsim.validate.schemas` prints them in the page's layout: one fenced block per
schema after its `<!-- schema: NAME -->` marker. A test compares the page with these, so
the published schema cannot drift from the models that check the files.
"""

from __future__ import annotations

import json

from tvwsim.validate.rows import row_json_schema
from tvwsim.validate.spec import spec_json_schema

SCHEMAS = {"sweep-spec": spec_json_schema, "measurement-row": row_json_schema}
"""Marker name in docs/validation.md -> the function that builds the schema."""


def markdown(name: str) -> str:
    """The page's block for schema `name`: marker, then the schema as fenced JSON."""
    text = json.dumps(SCHEMAS[name](), indent=2)
    return f"<!-- schema: {name} -->\n```json\n{text}\n```\n"


if __name__ == "__main__":
    print("\n".join(markdown(name) for name in SCHEMAS))
