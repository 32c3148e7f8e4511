"""Tests of `rules-engine validate` and the loader checks behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from engine.cli import main
from engine.errors import RuleProblem
from engine.loader import check_rules

FIXTURES = Path(__file__).parents[1] / "fixtures" / "rules"
INVALID = FIXTURES / "validate"
RULES = Path(__file__).parents[2] / "rules"
CASES: list[dict[str, Any]] = yaml.safe_load(
    (FIXTURES / "validate_cases.yaml").read_text(encoding="utf-8")
)


def expected_problems(case: dict[str, Any]) -> list[RuleProblem]:
    """Build the problems a case expects, naming the fixture's own path."""
    path = str(INVALID / case["file"])
    return [
        RuleProblem(
            path,
            item["line"],
            item["column"],
            item["rule"],
            item["message"],
            item["hint"].replace("{file}", path) if item["hint"] else None,
        )
        for item in case["problems"]
    ]


def by_place(problems: list[RuleProblem]) -> list[RuleProblem]:
    return sorted(problems, key=lambda p: (p.file, p.line, p.column))


@pytest.mark.parametrize("case", CASES, ids=[case["file"] for case in CASES])
def test_each_kind_of_problem_is_reported_with_place_and_hint(
    case: dict[str, Any],
) -> None:
    """Every invalid fixture yields exactly its problems, each with a hint."""
    ruleset, problems = check_rules(INVALID / case["file"])

    assert ruleset is None
    assert by_place(problems) == expected_problems(case)
    assert all(problem.hint for problem in problems)


def test_every_fixture_file_has_its_case() -> None:
    """No invalid fixture is left without expectations."""
    invalid = {case["file"] for case in CASES}
    files = {path.name for path in INVALID.glob("*.yaml")}

    assert files - invalid == {"custom_event_type.yaml"}


def test_a_namespaced_custom_event_type_is_accepted() -> None:
    """A type like billing.invoice_paid is a custom event, not a mistake."""
    ruleset, problems = check_rules(INVALID / "custom_event_type.yaml")

    assert problems == []
    assert ruleset is not None
    assert ruleset.rules[0].spec.on == ["billing.invoice_paid"]


def test_a_key_beside_a_merge_key_overrides_the_merged_one() -> None:
    """`<<: *base` then `on:` is no duplicate; the written key wins."""
    ruleset, problems = check_rules(FIXTURES / "merge_keys")

    assert problems == []
    assert ruleset is not None
    assert [
        (r.spec.name, r.spec.on, r.spec.cooldown, r.spec.priority)
        for r in ruleset.rules
    ] == [
        ("new-project", ["project.created"], None, 0),
        ("funded-project", ["project.funded"], None, 0),
        ("first-merge-wins", ["project.created"], 3600.0, 5),
    ]


def test_a_directory_reports_the_problems_of_every_file() -> None:
    """One run over the directory finds what the files find one by one."""
    _, problems = check_rules(INVALID)
    expected = [p for case in CASES for p in expected_problems(case)]

    assert by_place(problems) == by_place(expected)


def test_one_broken_rule_does_not_hide_the_others(tmp_path: Path) -> None:
    """A rule that fails its model still lets the next rule be checked."""
    text = (INVALID / "unknown_field.yaml").read_text() + (
        "  - name: second\n"
        "    on: contribution.created\n"
        "    actions:\n"
        "      - action: scal\n"
        "        params: {target: payment-functions, factor: 2}\n"
    )
    path = tmp_path / "two.yaml"
    path.write_text(text)

    _, problems = check_rules(path)

    assert [(p.line, p.rule) for p in by_place(problems)] == [
        (6, "burst-with-typo"),
        (13, "second"),
    ]


def test_the_loader_reads_only_files_directly_in_the_directory() -> None:
    """rules/tests/ holds rule tests, which are not rule files."""
    ruleset, problems = check_rules(RULES)

    assert problems == []
    assert ruleset is not None
    assert (RULES / "tests").is_dir()
    assert sorted(Path(f).name for f in ruleset.files) == [
        "alerts.yaml",
        "cache.yaml",
        "projects.yaml",
        "scaling.yaml",
        "tiers.yaml",
    ]


# The command


def test_the_command_prints_each_problem_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Text output is one file:line:col line per problem and a count."""
    path = str(INVALID / "duplicate_name.yaml")

    status = main(["validate", path])

    assert status == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{path}:3:11: rule 'announce-funding': Two rules share this name. "
        f"(hint: the other is at {path}:9:11; rename one)",
        f"{path}:9:11: rule 'announce-funding': Two rules share this name. "
        f"(hint: the other is at {path}:3:11; rename one)",
        "2 problems in 1 file.",
    ]


def test_the_command_summarises_valid_rules_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Valid rules give exit 0 and the counts with the rules version."""
    ruleset, _ = check_rules(RULES)
    assert ruleset is not None

    status = main(["validate", str(RULES)])

    assert status == 0
    assert capsys.readouterr().out == (
        f"{len(ruleset.rules)} rules in 5 files are valid "
        f"(version {ruleset.version}).\n"
    )


def test_the_command_reports_json_on_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--format json lists the problems as objects."""
    path = str(INVALID / "wordy_duration.yaml")

    status = main(["validate", "--format", "json", path])

    assert status == 1
    assert orjson.loads(capsys.readouterr().out) == {
        "valid": False,
        "problems": [
            {
                "file": path,
                "line": 5,
                "column": 15,
                "rule": "cooldown-in-words",
                "message": "rules.0.cooldown: '5 minutes' is not a duration in "
                "the rule language.",
                "hint": "write 5m",
            }
        ],
    }
