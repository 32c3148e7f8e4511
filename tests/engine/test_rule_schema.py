"""Tests of the JSON Schema of rule files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine.cli import main
from engine.rule_schema import SCHEMA_PATH, generate_schema, render_schema
from engine.yaml_source import load_with_marks

ROOT = Path(__file__).parents[2]
SHIPPED = sorted((ROOT / "rules").glob("*.yaml"))
INVALID = ROOT / "tests" / "fixtures" / "rules" / "validate"
HEADER = "# yaml-language-server: $schema=../engine/schema/rules.schema.json\n"


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def read_yaml(path: Path) -> Any:
    # The rule files' own reader: `on` is a key there, not a boolean.
    data, _ = load_with_marks(path.read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize(
    "path", [SCHEMA_PATH, ROOT / "docs" / "rules.schema.json"], ids=["engine", "docs"]
)
def test_the_committed_schema_is_the_generated_one(path: Path) -> None:
    """Regenerate with `rules-engine schema --out` after changing the models."""
    assert path.read_text(encoding="utf-8") == render_schema()


def test_the_schema_is_a_valid_2020_12_schema() -> None:
    """Editors and jsonschema accept the schema itself."""
    jsonschema.Draft202012Validator.check_schema(generate_schema())


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_rule_file_validates_against_the_schema(path: Path) -> None:
    """The schema accepts what the loader accepts."""
    errors = [error.message for error in validator().iter_errors(read_yaml(path))]

    assert errors == []


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_rule_file_names_the_schema_first(path: Path) -> None:
    """Editors find the schema from the file's first line."""
    with path.open(encoding="utf-8") as handle:
        assert handle.readline() == HEADER


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("unknown_field.yaml", ["rules", 0, "threshold"]),
        ("wordy_duration.yaml", ["rules", 0, "cooldown"]),
        ("hysteresis_one.yaml", ["rules", 0, "classify"]),
    ],
)
def test_the_schema_refuses_a_wrong_shape_where_it_is(
    name: str, path: list[str | int]
) -> None:
    """Shape errors are caught while typing, at the offending value."""
    errors = list(validator().iter_errors(read_yaml(INVALID / name)))

    assert [list(error.absolute_path) for error in errors] == [path]


def test_the_command_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """`rules-engine schema` prints exactly the committed text."""
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == render_schema()
