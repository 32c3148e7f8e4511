"""Tests of loading rule files: every problem with its place, and good rules.

The problem kinds that `rules-engine validate` is known for (YAML syntax,
duplicate keys and names, unknown fields and actions, bad parameters,
wordy durations, impossible thresholds, spans beyond the retention,
unknown template roots) have their fixtures in rules/validate/ and are
checked in test_validate.py; the fixtures in rules/invalid/ cover the
rest, each in its own file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.engine import Engine
from engine.errors import RuleLoadError, RuleProblem
from engine.loader import check_rules, load_rules

FIXTURES = Path(__file__).parents[1] / "fixtures" / "rules"
INVALID = FIXTURES / "invalid"
SHIPPED = Path(__file__).parents[2] / "rules"
CASES: list[dict[str, Any]] = yaml.safe_load(
    (FIXTURES / "invalid_cases.yaml").read_text(encoding="utf-8")
)
GOOD_RULE = """\
rules:
  - name: {name}
    on: project.created
    actions:
      - action: notify
        params: {{severity: info, title: New project}}
"""


def expected_problems(case: dict[str, Any]) -> list[RuleProblem]:
    """Build the problems a case expects, in the fixture's own file."""
    file = str(INVALID / case["file"])
    folder = str(INVALID / case.get("path", ""))
    return [
        RuleProblem(
            file,
            item["line"],
            item["column"],
            item["rule"],
            item["message"],
            item["hint"].replace("{dir}", folder) if item["hint"] else None,
        )
        for item in case["problems"]
    ]


def by_place(problems: list[RuleProblem]) -> list[RuleProblem]:
    return sorted(problems, key=lambda p: (p.file, p.line, p.column))


# Invalid files


@pytest.mark.parametrize("case", CASES, ids=[case["file"] for case in CASES])
def test_each_invalid_file_reports_exactly_its_problems(case: dict[str, Any]) -> None:
    """File, line, column, rule, message and hint of every problem."""
    ruleset, problems = check_rules(INVALID / case.get("path", case["file"]))

    assert ruleset is None
    assert by_place(problems) == expected_problems(case)


def test_every_invalid_fixture_has_its_case() -> None:
    """No invalid fixture is left without expectations."""
    cased = {case.get("path", case["file"]) for case in CASES}
    present = {path.name for path in INVALID.iterdir()}

    assert present == cased


def test_load_rules_raises_with_every_problem_in_its_message() -> None:
    """The error lists each problem as file:line:column: rule: message (hint)."""
    path = INVALID / "several_broken_rules.yaml"

    with pytest.raises(RuleLoadError) as caught:
        load_rules(path)

    assert len(caught.value.problems) == 3
    assert str(caught.value).splitlines() == [
        "The rules did not load: 3 problems.",
        f"  {path}:5:5: rule 'first-broken': rules.0.priorty is not a field of "
        "the rule language. (hint: did you mean 'priority'?)",
        f"  {path}:18:15: rule 'second-broken': rules.2.cooldown: '10 seconds' is "
        "not a duration in the rule language. (hint: write 10s)",
        f"  {path}:26:17: rule 'third-broken': The action 'notiffy' is not a "
        "registered handler. (hint: did you mean 'notify'?)",
    ]


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (
            RuleProblem("r.yaml", 3, 7, "x", "Bad.", "fix it"),
            "r.yaml:3:7: rule 'x': Bad. (hint: fix it)",
        ),
        (RuleProblem("r.yaml", 1, 1, None, "Bad."), "r.yaml:1:1: Bad."),
    ],
)
def test_a_problem_reads_as_one_line(problem: RuleProblem, text: str) -> None:
    """The place comes first, as editors and terminals link it."""
    assert str(problem) == text


def test_a_missing_path_is_one_problem(tmp_path: Path) -> None:
    """A mistyped --rules path says so instead of loading nothing."""
    ruleset, problems = check_rules(tmp_path / "nowhere")

    assert ruleset is None
    assert [(p.message, p.hint) for p in problems] == [
        ("The rules path does not exist.", "pass a directory of .yaml rule files")
    ]


def test_a_directory_without_rule_files_is_one_problem(tmp_path: Path) -> None:
    """Other files do not count as rules."""
    (tmp_path / "notes.txt").write_text("rules: []\n")

    ruleset, problems = check_rules(tmp_path)

    assert ruleset is None
    assert [p.message for p in problems] == ["The directory holds no .yaml rule files."]


def test_a_dangling_link_is_a_problem_not_a_missing_file(tmp_path: Path) -> None:
    """A rule file whose link points nowhere is reported, not skipped."""
    (tmp_path / "a.yaml").write_text(GOOD_RULE.format(name="first"))
    (tmp_path / "b.yaml").symlink_to(tmp_path / "gone.yaml")

    ruleset, problems = check_rules(tmp_path)

    assert ruleset is None
    assert [(Path(p.file).name, p.line) for p in problems] == [("b.yaml", 1)]
    assert problems[0].message.startswith("The file cannot be read: [Errno 2]")


def test_a_rule_file_that_is_not_utf8_is_a_problem(tmp_path: Path) -> None:
    """A file saved in another encoding is reported with the file's name."""
    (tmp_path / "a.yaml").write_bytes(b"rules:\n  - name: caf\xe9\n")

    ruleset, problems = check_rules(tmp_path)

    assert ruleset is None
    assert [Path(p.file).name for p in problems] == ["a.yaml"]
    assert problems[0].message.startswith(
        "The file cannot be read: 'utf-8' codec can't decode byte 0xe9"
    )


def test_hidden_files_and_links_are_not_rules(tmp_path: Path) -> None:
    """Editors' lock files and backups (dot files) are left alone."""
    (tmp_path / "a.yaml").write_text(GOOD_RULE.format(name="first"))
    (tmp_path / ".#a.yaml").symlink_to(tmp_path / "user@host.1234")
    (tmp_path / ".a.yaml.swp.yaml").write_text("not: [valid")

    ruleset, problems = check_rules(tmp_path)

    assert problems == []
    assert ruleset is not None
    assert [r.spec.name for r in ruleset.rules] == ["first"]


def test_a_linked_rule_file_loads(tmp_path: Path) -> None:
    """ConfigMap volumes link every file; a link to a good file loads."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.yaml").write_text(GOOD_RULE.format(name="linked"))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.yaml").symlink_to(tmp_path / "real" / "a.yaml")

    ruleset = load_rules(tmp_path / "rules")

    assert [r.spec.name for r in ruleset.rules] == ["linked"]


# Good files


def test_the_shipped_rules_load_without_problems() -> None:
    """rules/ loads as it is shipped, with its tiers and settings."""
    ruleset, problems = check_rules(SHIPPED)

    assert problems == []
    assert ruleset is not None
    assert len(ruleset.rules) == 20
    assert list(ruleset.tiers) == ["mvp", "growth", "scale", "enterprise"]
    assert ruleset.settings.initial_tier == "mvp"
    assert ruleset.settings.state_retention == 30 * 86400
    assert [Path(f).name for f in ruleset.files] == [
        "alerts.yaml",
        "cache.yaml",
        "projects.yaml",
        "scaling.yaml",
        "tiers.yaml",
    ]


def test_the_shipped_rules_compile_for_durable_rules() -> None:
    """Every shipped condition is accepted by the matcher."""
    engine = Engine(load_rules(SHIPPED))

    assert set(engine.runtimes) == {r.spec.name for r in engine.ruleset.rules}
    engine.close()


def test_rules_keep_file_order_place_and_position(tmp_path: Path) -> None:
    """Files load in name order; each rule knows its file, line and order."""
    (tmp_path / "b.yaml").write_text(GOOD_RULE.format(name="second"))
    (tmp_path / "a.yaml").write_text("# first\n" + GOOD_RULE.format(name="first"))

    ruleset = load_rules(tmp_path)

    assert [
        (r.spec.name, Path(r.file).name, r.line, r.order) for r in ruleset.rules
    ] == [("first", "a.yaml", 3, 0), ("second", "b.yaml", 2, 1)]


def test_a_file_path_loads_only_that_file(tmp_path: Path) -> None:
    """--rules may name one file as well as a directory."""
    (tmp_path / "a.yaml").write_text(GOOD_RULE.format(name="first"))
    (tmp_path / "b.yaml").write_text(GOOD_RULE.format(name="second"))

    ruleset = load_rules(tmp_path / "b.yaml")

    assert [r.spec.name for r in ruleset.rules] == ["second"]


def test_the_version_follows_the_content(tmp_path: Path) -> None:
    """Same files, same version; any change to a file, a new version."""
    shutil.copytree(SHIPPED, tmp_path / "rules")
    before = load_rules(tmp_path / "rules").version
    again = load_rules(tmp_path / "rules").version
    cache = tmp_path / "rules" / "cache.yaml"
    cache.write_text(cache.read_text() + "\n# a comment\n")

    after = load_rules(tmp_path / "rules").version

    assert before == again == load_rules(SHIPPED).version
    assert after != before
    assert len(before) == 12
