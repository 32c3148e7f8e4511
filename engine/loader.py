"""Load a directory of rule files, reporting every problem with its place.

Loading never stops at the first problem: operations staff fix a whole
batch of mistakes from one run of `rules-engine validate`.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.errors import HandlerNotFound, RuleLoadError, RuleProblem
from engine.rule_model import RuleFile, RuleSpec, Settings, TierConfig, check_conditions
from engine.templates import ROOTS, find_placeholders
from engine.yaml_source import Marks, YamlSyntaxError, load_with_marks
from handlers.registry import HandlerRegistry

__all__ = ["LoadedRule", "RuleSet", "check_rules", "load_rules"]

RULE_SUFFIXES = (".yaml", ".yml")
_FIELD_NAMES = {
    "rule": list(RuleSpec.model_fields) + ["for"],
}


@dataclass(frozen=True)
class LoadedRule:
    """A rule with the file and position it came from."""

    spec: RuleSpec
    file: str
    line: int
    order: int


@dataclass
class RuleSet:
    """Every rule of a directory, its tiers and settings, and its version."""

    rules: list[LoadedRule]
    tiers: dict[str, TierConfig]
    settings: Settings
    version: str
    files: list[str] = field(default_factory=list)

    def by_name(self, name: str) -> LoadedRule | None:
        """Return the rule with this name, if any."""
        return next((r for r in self.rules if r.spec.name == name), None)


@dataclass
class _FileResult:
    path: str
    parsed: RuleFile | None
    marks: Marks
    problems: list[RuleProblem]


def _rule_name_at(raw: Any, index: Any) -> str | None:
    if isinstance(raw, dict) and isinstance(raw.get("rules"), list):
        rules = raw["rules"]
        if (
            isinstance(index, int)
            and index < len(rules)
            and isinstance(rules[index], dict)
        ):
            name = rules[index].get("name")
            return name if isinstance(name, str) else None
    return None


def _hint_for(error: dict[str, Any]) -> str | None:
    kind = error.get("type", "")
    loc = error.get("loc", ())
    if kind == "extra_forbidden" and loc:
        unknown = str(loc[-1])
        close = difflib.get_close_matches(
            unknown,
            _FIELD_NAMES["rule"]
            + [
                "params",
                "action",
                "coalesce",
                "window",
                "field",
                "fn",
                "by",
                "above",
                "below",
                "clear_below",
                "clear_above",
                "repeat",
                "bands",
                "hysteresis",
                "first",
                "then",
                "key",
                "within",
            ],
            n=1,
        )
        return (
            f"did you mean {close[0]!r}?"
            if close
            else "remove it; the rule language has no such field"
        )
    if kind == "missing" and loc:
        return f"add '{loc[-1]}'"
    message = str(error.get("msg", ""))
    if "Hint:" in message:
        return message.split("Hint:", 1)[1].strip().rstrip(".")
    return None


def _message_for(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error.get("loc", ()))
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if "Hint:" in message:
        message = message.split("Hint:", 1)[0].strip()
    if kind == "extra_forbidden":
        return f"{loc} is not a field of the rule language."
    if kind == "missing":
        return f"{loc} is required."
    return f"{loc}: {message}" if loc else message


def _parse_file(path: Path) -> _FileResult:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        problem = RuleProblem(name, 1, 1, None, f"The file cannot be read: {error}.")
        return _FileResult(name, None, Marks(), [problem])
    try:
        raw, marks = load_with_marks(text)
    except YamlSyntaxError as error:
        problem = RuleProblem(name, error.line, error.column, None, str(error))
        return _FileResult(name, None, Marks(), [problem])
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problem = RuleProblem(
            name,
            1,
            1,
            None,
            "A rule file must be a mapping with a 'rules' list.",
            hint="start the file with 'rules:'",
        )
        return _FileResult(name, None, marks, [problem])

    problems: list[RuleProblem] = []
    try:
        parsed: RuleFile | None = RuleFile.model_validate(raw)
    except ValidationError as error:
        parsed = None
        for item in error.errors():
            loc = tuple(item["loc"])
            line, column = marks.locate(loc)
            rule = (
                _rule_name_at(raw, loc[1])
                if len(loc) > 1 and loc[0] == "rules"
                else None
            )
            problems.append(
                RuleProblem(
                    name,
                    line,
                    column,
                    rule,
                    _message_for(dict(item)),
                    _hint_for(dict(item)),
                )
            )
    return _FileResult(name, parsed, marks, problems)


def _check_actions(
    result: _FileResult, index: int, rule: RuleSpec, registry: HandlerRegistry
) -> list[RuleProblem]:
    problems: list[RuleProblem] = []
    for position, spec in enumerate(rule.actions):
        where = ("rules", index, "actions", position)
        line, column = result.marks.locate((*where, "action"))
        try:
            handler = registry.handler_class(spec.action)
        except HandlerNotFound:
            close = difflib.get_close_matches(spec.action, registry.names(), n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else f"known: {', '.join(registry.names())}"
            )
            problems.append(
                RuleProblem(
                    result.path,
                    line,
                    column,
                    rule.name,
                    f"The action {spec.action!r} is not a registered handler.",
                    hint,
                )
            )
            continue

        templated = set()
        for key, value in spec.params.items():
            for placeholder in find_placeholders(value):
                templated.add(key)
                root = placeholder.split(".")[0]
                if root not in ROOTS:
                    pline, pcol = result.marks.locate((*where, "params", key))
                    problems.append(
                        RuleProblem(
                            result.path,
                            pline,
                            pcol,
                            rule.name,
                            f"The template {{{{ {placeholder} }}}} in params.{key} names an unknown value.",
                            f"start it with one of {', '.join(ROOTS)}",
                        )
                    )
        try:
            handler.Params.model_validate(spec.params)
        except ValidationError as error:
            for item in error.errors():
                loc = tuple(item["loc"])
                if loc and loc[0] in templated:
                    continue
                pline, pcol = result.marks.locate((*where, "params", *loc))
                detail = ".".join(str(p) for p in loc) or "params"
                message = str(item["msg"]).removeprefix("Value error, ")
                problems.append(
                    RuleProblem(
                        result.path,
                        pline,
                        pcol,
                        rule.name,
                        f"Bad parameter {detail} for {spec.action!r}: {message}.",
                        _hint_for(dict(item)),
                    )
                )
    return problems


def check_rules(
    path: str | Path, registry: HandlerRegistry | None = None
) -> tuple[RuleSet | None, list[RuleProblem]]:
    """Load rules and return them with every problem found (rules None if any)."""
    registry = registry or HandlerRegistry()
    root = Path(path)
    if root.is_dir():
        files = sorted(
            p for p in root.iterdir() if p.suffix in RULE_SUFFIXES and p.is_file()
        )
    elif root.is_file():
        files = [root]
    else:
        problem = RuleProblem(
            str(root),
            1,
            1,
            None,
            "The rules path does not exist.",
            "pass a directory of .yaml rule files",
        )
        return None, [problem]
    if not files:
        problem = RuleProblem(
            str(root), 1, 1, None, "The directory holds no .yaml rule files."
        )
        return None, [problem]

    problems: list[RuleProblem] = []
    rules: list[LoadedRule] = []
    tiers: dict[str, TierConfig] = {}
    settings: Settings | None = None
    seen: dict[str, LoadedRule] = {}
    digest = hashlib.sha256()

    for file in files:
        result = _parse_file(file)
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
        problems += result.problems
        if result.parsed is None:
            continue

        # File-level sections
        if result.parsed.tiers:
            if tiers:
                line, column = result.marks.locate(("tiers",))
                problems.append(
                    RuleProblem(
                        result.path,
                        line,
                        column,
                        None,
                        "Tiers are defined in more than one file.",
                        "keep the tiers in one file",
                    )
                )
            tiers.update(result.parsed.tiers)
        if result.parsed.settings is not None:
            if settings is not None:
                line, column = result.marks.locate(("settings",))
                problems.append(
                    RuleProblem(
                        result.path,
                        line,
                        column,
                        None,
                        "Settings are defined in more than one file.",
                        "keep the settings in one file",
                    )
                )
            settings = result.parsed.settings

        for index, spec in enumerate(result.parsed.rules):
            line, column = result.marks.locate(("rules", index))
            for where, message in check_conditions(spec):
                cline, ccol = result.marks.locate(("rules", index, *where))
                problems.append(
                    RuleProblem(result.path, cline, ccol, spec.name, message)
                )
            problems += _check_actions(result, index, spec, registry)
            loaded = LoadedRule(spec, result.path, line, len(rules))
            if spec.name in seen:
                first = seen[spec.name]
                nline, ncol = result.marks.locate(("rules", index, "name"))
                problems.append(
                    RuleProblem(
                        result.path,
                        nline,
                        ncol,
                        spec.name,
                        "Two rules share this name.",
                        f"the other is at {first.file}:{first.line}; rename one",
                    )
                )
                continue
            seen[spec.name] = loaded
            rules.append(loaded)

    settings = settings or Settings()
    problems += _check_cross_file(rules, tiers, settings)
    if problems:
        return None, problems
    version = digest.hexdigest()[:12]
    return RuleSet(rules, tiers, settings, version, [str(f) for f in files]), []


def _check_cross_file(
    rules: list[LoadedRule], tiers: dict[str, TierConfig], settings: Settings
) -> list[RuleProblem]:
    problems: list[RuleProblem] = []
    retention = settings.state_retention
    if settings.initial_tier is not None and settings.initial_tier not in tiers:
        problems.append(
            RuleProblem(
                "settings",
                1,
                1,
                None,
                f"The initial tier {settings.initial_tier!r} is not defined under 'tiers'.",
            )
        )
    for loaded in rules:
        spec = loaded.spec
        spans = []
        if spec.aggregate is not None and spec.aggregate.window is not None:
            spans.append(("window", spec.aggregate.window))
        if spec.correlate is not None:
            spans.append(("correlate.within", spec.correlate.within))
        for label, seconds in spans:
            if seconds > retention:
                problems.append(
                    RuleProblem(
                        loaded.file,
                        loaded.line,
                        1,
                        spec.name,
                        f"The {label} of {seconds:g}s is longer than the state retention of {retention:g}s, so its state would be dropped too early.",
                        "shorten it or raise settings.state_retention",
                    )
                )
        for action in spec.actions:
            target = action.params.get("to")
            if (
                action.action == "change_tier"
                and isinstance(target, str)
                and "{{" not in target
                and target not in tiers
            ):
                problems.append(
                    RuleProblem(
                        loaded.file,
                        loaded.line,
                        1,
                        spec.name,
                        f"change_tier names the tier {target!r}, which is not defined under 'tiers'.",
                    )
                )
        if (
            spec.classify is not None
            and any(a.action == "change_tier" for a in spec.actions)
            and tiers
        ):
            unknown = [b.name for b in spec.classify.bands if b.name not in tiers]
            if unknown:
                problems.append(
                    RuleProblem(
                        loaded.file,
                        loaded.line,
                        1,
                        spec.name,
                        f"The bands {', '.join(unknown)} are not tiers, but the rule changes the tier to its band.",
                    )
                )
    return problems


def load_rules(path: str | Path, registry: HandlerRegistry | None = None) -> RuleSet:
    """Load and check every rule file under `path`.

    Raises:
        RuleLoadError: any file has any problem; every problem is listed.
    """
    ruleset, problems = check_rules(path, registry)
    if ruleset is None:
        raise RuleLoadError(problems)
    return ruleset
