"""The JSON Schema of a rule file, generated from the rule language's models.

Editors that read the `# yaml-language-server: $schema=...` line at the top
of a rule file check it against this schema as people type. The schema is
committed as `engine/schema/rules.schema.json` (shipped with the package)
and as `docs/rules.schema.json`; a test keeps both equal to what
`generate_schema` returns, so the models stay the only source of truth.

The schema checks the shape of a file only. `rules-engine validate` checks
what a schema cannot: handler names and parameters, templates, names that
repeat across files, spans longer than the state retention.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.rule_model import RuleFile

__all__ = ["SCHEMA_PATH", "generate_schema", "render_schema"]

SCHEMA_PATH = Path(__file__).parent / "schema" / "rules.schema.json"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def generate_schema() -> dict[str, Any]:
    """Return the JSON Schema of one rule file."""
    schema = RuleFile.model_json_schema(by_alias=True)
    return {
        "$schema": _DIALECT,
        "title": "Rule file",
        **{key: value for key, value in schema.items() if key != "title"},
    }


def render_schema() -> str:
    """Return the schema as the committed files hold it."""
    return json.dumps(generate_schema(), indent=2, ensure_ascii=False) + "\n"
