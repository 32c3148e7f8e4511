"""Load a directory of rule files, reporting every problem with its place.

Loading never stops at the first problem: operations staff fix a whole
batch of mistakes from one run of `rules-engine validate`.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from engine.durations import format_duration
from engine.errors import HandlerNotFound, RuleLoadError, RuleProblem
from engine.event_data import DATA_MODELS
from engine.rule_model import (
    ActionSpec,
    RuleFile,
    RuleSpec,
    Settings,
    TierConfig,
    check_conditions,
    check_raw_conditions,
)
from engine.templates import ROOTS, EscapingParams, find_placeholders
from engine.yaml_source import Marks, YamlSyntaxError, load_with_marks
from handlers.registry import HandlerRegistry

__all__ = ["LoadedRule", "RuleSet", "check_rules", "load_rules"]

RULE_SUFFIXES = (".yaml", ".yml")
# A custom event type is namespaced like the platform's own (`project.funded`);
# a bare word is almost always a typo of a known type.
_NAMESPACED_TYPE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")
# Hints for constraint errors that pydantic words without the reason.
_CONSTRAINT_HINTS = {
    "hysteresis": "a hysteresis is a fraction of the boundary, such as 0.1 for 10%",
}
_ModelT = TypeVar("_ModelT", bound=BaseModel)
# Time spans that must fit in the state retention, by their label.
_SPAN_PATHS = {
    "window": ("aggregate", "window"),
    "correlate.within": ("correlate", "within"),
}
_FIELD_NAMES = {
    "rule": [*RuleSpec.model_fields, "for", *RuleFile.model_fields],
}
# What a parameter that is one placeholder alone renders as, for the roots
# whose type is known: such a parameter keeps the value's type, so
# `message: "{{ value }}"` is a number that a text parameter refuses at
# every firing. A sample stands for its type only, unless `_Roots` knows
# every value the root takes. Paths into events (`data`, `event`, `first`)
# and aggregate keys can hold anything and are not checked.
_SAMPLES: dict[str, Any] = {
    "value": 1,
    "band": "band",
    "previous": "band",
    "rule": "rule",
    "tier": "tier",
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


@dataclass(frozen=True)
class _Roots:
    """The template roots one kind of rule provides when it fires.

    `kind` names the rule's kind in messages, empty when it is unknown
    (a rule too broken to tell). `exact` holds, by root, every value the
    root can take in this rule: its own name, the names of its bands.
    """

    names: tuple[str, ...]
    kind: str = ""
    exact: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _roots_of(spec: RuleSpec) -> _Roots:
    """Return the template roots that the rule's firings provide.

    An event rule fires with its event; an aggregate with its value, and a
    key when it has `by`; a band rule also with its band and the previous
    one; a correlation with its `then` event, key and `first` event.
    Every rule has its name and the current tier.
    """
    exact: dict[str, tuple[str, ...]] = {"rule": (spec.name,)}
    if spec.correlate is not None:
        paired = ("event", "data", "key", "first", "rule", "tier")
        return _Roots(paired, "a correlation rule", exact)
    if spec.aggregate is None:
        return _Roots(("event", "data", "rule", "tier"), "an event rule", exact)

    names = ("value", "key") if spec.aggregate.by else ("value",)
    if spec.classify is None:
        return _Roots((*names, "rule", "tier"), "a threshold rule", exact)
    bands = tuple(band.name for band in spec.classify.bands)
    exact |= {"band": bands, "previous": bands}
    return _Roots((*names, "band", "previous", "rule", "tier"), "a band rule", exact)


@dataclass(frozen=True)
class _Salvage:
    """What can still be checked of a rule that failed validation.

    `spec` is the rule without its faulty fields, when that much is a
    valid rule; otherwise only the rule's valid actions are kept.
    """

    name: str | None
    spec: RuleSpec | None
    actions: list[tuple[int, ActionSpec]]
    # The problems of its conditions as written, when `spec` is None.
    conditions: list[tuple[tuple[str | int, ...], str]] = field(default_factory=list)


@dataclass
class _FileResult:
    path: str
    parsed: RuleFile | None
    marks: Marks
    problems: list[RuleProblem]
    # The valid rules with their index in the file's `rules` list.
    rules: list[tuple[int, RuleSpec]] = field(default_factory=list)
    # The invalid rules, by index, so that their other parts are checked too.
    salvaged: list[tuple[int, _Salvage]] = field(default_factory=list)
    # The bytes read, once: the rules' version is their digest.
    content: bytes = b""


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
    if loc and str(loc[-1]) in _CONSTRAINT_HINTS:
        return _CONSTRAINT_HINTS[str(loc[-1])]
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
    # pydantic's own messages are phrases; end them as sentences.
    if not message.endswith("."):
        message += "."
    return f"{loc}: {message}" if loc else message


def _parse_file(path: Path) -> _FileResult:
    name = str(path)
    try:
        content = path.read_bytes()
        text = content.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        problem = RuleProblem(name, 1, 1, None, f"The file cannot be read: {error}.")
        return _FileResult(name, None, Marks(), [problem])
    result = _parse_text(name, text)
    result.content = content
    return result


def _parse_text(name: str, text: str) -> _FileResult:
    try:
        raw, marks = load_with_marks(text)
    except YamlSyntaxError as error:
        problem = RuleProblem(
            name, error.line, error.column, None, str(error), error.hint
        )
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

    # Each rule is validated on its own, so that one broken rule does not
    # hide the problems of the other rules of the file.
    result = _FileResult(name, None, marks, [])
    items = raw.get("rules")
    if not isinstance(items, list):
        result.parsed = _validate(RuleFile, raw, (), raw, result)
        if result.parsed is not None:
            result.rules = list(enumerate(result.parsed.rules))
        return result
    head = {key: value for key, value in raw.items() if key != "rules"}
    result.parsed = _validate(RuleFile, head, (), raw, result)
    for index, item in enumerate(items):
        spec = _validate(RuleSpec, item, ("rules", index), raw, result)
        if spec is not None:
            result.rules.append((index, spec))
        elif isinstance(item, dict):
            result.salvaged.append((index, _salvage(item)))
    return result


def _salvage(item: dict[Any, Any]) -> _Salvage:
    """Keep the parts of an invalid rule that are valid on their own.

    One wrong field must not hide the rule's other problems: a misspelt
    `wehn` would otherwise leave an unknown action unreported until the
    next run. The rule is validated again without its faulty fields; if
    that still fails, its actions are checked one by one.
    """
    name = item.get("name")
    name = name if isinstance(name, str) else None
    try:
        RuleSpec.model_validate(item)
    except ValidationError as error:
        faulty = {entry["loc"][0] for entry in error.errors() if entry["loc"]}
    else:
        faulty = set()
    try:
        spec = RuleSpec.model_validate(
            {key: value for key, value in item.items() if key not in faulty}
        )
        return _Salvage(name, spec, list(enumerate(spec.actions)))
    except ValidationError:
        pass

    # The problems of each action were reported with the rule's own; those
    # of the conditions are found here, as no model checked them.
    actions: list[tuple[int, ActionSpec]] = []
    written = item.get("actions")
    for position, raw in enumerate(written if isinstance(written, list) else []):
        try:
            actions.append((position, ActionSpec.model_validate(raw)))
        except ValidationError:
            continue
    return _Salvage(name, None, actions, check_raw_conditions(item))


def _validate(
    model: type[_ModelT],
    value: Any,
    prefix: tuple[str | int, ...],
    raw: Any,
    result: _FileResult,
) -> _ModelT | None:
    try:
        return model.model_validate(value)
    except ValidationError as error:
        for item in error.errors():
            loc = (*prefix, *item["loc"])
            # An unknown field is the key's fault, not its value's.
            if item["type"] == "extra_forbidden":
                line, column = result.marks.locate_key(loc)
            else:
                line, column = result.marks.locate(loc)
            rule = (
                _rule_name_at(raw, loc[1])
                if len(loc) > 1 and loc[0] == "rules"
                else None
            )
            located = {**item, "loc": loc}
            result.problems.append(
                RuleProblem(
                    result.path,
                    line,
                    column,
                    rule,
                    _message_for(located),
                    _hint_for(located),
                )
            )
        return None


def _check_actions(
    result: _FileResult,
    index: int,
    rule: str | None,
    actions: list[tuple[int, ActionSpec]],
    registry: HandlerRegistry,
    roots: _Roots,
) -> list[RuleProblem]:
    problems: list[RuleProblem] = []
    for position, spec in actions:
        where = ("rules", index, "actions", position)
        line, column = result.marks.locate((*where, "action"))
        try:
            handler = registry.handler_class(spec.action)
        except HandlerNotFound:
            close = difflib.get_close_matches(spec.action, registry.names(), n=1)
            known = (
                f"did you mean {close[0]!r}?"
                if close
                else f"known: {', '.join(registry.names())}"
            )
            problems.append(
                RuleProblem(
                    result.path,
                    line,
                    column,
                    rule,
                    f"The action {spec.action!r} is not a registered handler.",
                    known,
                )
            )
            continue

        # Templated parameters are checked with samples of what they
        # render as when that is known, and left out otherwise.
        templated: set[str] = set()
        samples: dict[str, tuple[Any, ...]] = {}
        for key, value in spec.params.items():
            placeholders = find_placeholders(value)
            sample = _sample(value, placeholders, roots)
            if sample:
                samples[key] = sample
            elif placeholders:
                templated.add(key)
            for placeholder in placeholders:
                problem = _check_root(placeholder, key, roots)
                if problem is not None:
                    pline, pcol = result.marks.locate((*where, "params", key))
                    problems.append(
                        RuleProblem(result.path, pline, pcol, rule, *problem)
                    )

        # Each sample of a parameter is tried; its first failure is told.
        told: set[tuple[Any, ...]] = set()
        for turn in range(max(map(len, samples.values()), default=1)):
            tried = {
                key: found[min(turn, len(found) - 1)] for key, found in samples.items()
            }
            problems += _check_params(
                result, where, rule, spec, handler.Params, tried, templated, roots, told
            )
    return problems


def _check_root(placeholder: str, key: str, roots: _Roots) -> tuple[str, str] | None:
    """Return the message and hint for a placeholder the rule cannot fill."""
    root = placeholder.split(".")[0]
    written = f"{{{{ {placeholder} }}}}"
    if root not in ROOTS:
        return (
            f"The template {written} in params.{key} names an unknown value.",
            f"start it with one of {', '.join(ROOTS)}",
        )
    if root not in roots.names:
        return (
            f"The template {written} in params.{key} names {root!r}, which "
            f"{roots.kind} does not have, so the action would fail at every firing.",
            f"{roots.kind} has {', '.join(roots.names)}",
        )
    return None


def _check_params(
    result: _FileResult,
    where: tuple[str | int, ...],
    rule: str | None,
    spec: ActionSpec,
    params: type[BaseModel],
    samples: dict[str, Any],
    templated: set[str],
    roots: _Roots,
    told: set[tuple[Any, ...]],
) -> list[RuleProblem]:
    """Validate an action's parameters, templated ones by their samples.

    Problems at a place already in `told` are left out, and the others are
    added to it.
    """
    problems: list[RuleProblem] = []
    try:
        params.model_validate(spec.params | samples)
    except ValidationError as error:
        for item in error.errors():
            loc = tuple(item["loc"])
            if (loc and loc[0] in templated) or loc in told:
                continue
            sampled = bool(loc) and loc[0] in samples
            written = spec.params[str(loc[0])] if sampled else None
            exact = sampled and _root_of(written) in roots.exact
            # A sample that only stands for a type says nothing of bounds
            # or allowed names; text that no number parses from is a type.
            type_error = item["type"].endswith(("_type", "_parsing"))
            if sampled and not exact and not type_error:
                continue
            told.add(loc)
            place = (*where, "params", *loc)
            if item["type"] == "extra_forbidden":
                pline, pcol = result.marks.locate_key(place)
            else:
                pline, pcol = result.marks.locate(place)
            detail = ".".join(str(p) for p in loc) or "params"
            message = str(item["msg"]).removeprefix("Value error, ")
            hint = _param_hint(params, dict(item))
            if sampled:
                sample = samples[str(loc[0])]
                kind = "text" if isinstance(sample, str) else "a number"
                shown = f"{kind} {sample!r}" if exact else kind
                message = f"the template {written!r} renders as {shown}: {message}"
                if kind == "a number":
                    hint = (
                        "a placeholder alone keeps the value's type; put "
                        f"text around it, such as 'Value: {written}'"
                    )
            problems.append(
                RuleProblem(
                    result.path,
                    pline,
                    pcol,
                    rule,
                    f"Bad parameter {detail} for {spec.action!r}: {message}.",
                    hint,
                )
            )
    return problems


def _root_of(value: Any) -> str:
    """Return the root of a parameter that is one placeholder alone."""
    return find_placeholders(value)[0].split(".")[0]


def _sample(value: Any, placeholders: list[str], roots: _Roots) -> tuple[Any, ...]:
    """Return what a parameter that is one known placeholder may render as."""
    if (
        len(placeholders) != 1
        or not isinstance(value, str)
        or not (value.startswith("{{") and value.endswith("}}"))
        or placeholders[0] not in roots.names
    ):
        return ()
    exact = roots.exact.get(placeholders[0])
    if exact is not None:
        return exact
    sample = _SAMPLES.get(placeholders[0])
    return () if sample is None else (sample,)


def _param_hint(params: type[BaseModel], error: dict[str, Any]) -> str | None:
    """Say what a handler parameter takes, from the handler's own model."""
    loc = error.get("loc", ())
    fields = params.model_json_schema().get("properties", {})
    name = str(loc[0]) if loc else ""
    if error.get("type") == "extra_forbidden":
        close = difflib.get_close_matches(name, list(fields), n=1)
        return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(fields)}"
    if error.get("type") == "missing":
        return f"add '{name}'"
    schema = fields.get(name)
    if schema is None or len(loc) != 1:
        return None
    if "enum" in schema:
        return f"{name} takes one of {', '.join(map(repr, schema['enum']))}"
    limits = [
        f"{word} {schema[key]:g}"
        for key, word in (
            ("exclusiveMinimum", "above"),
            ("minimum", "at least"),
            ("exclusiveMaximum", "below"),
            ("maximum", "at most"),
        )
        if key in schema
    ]
    kind = {
        "number": "a number",
        "integer": "a whole number",
        "string": "text",
        "array": "a list",
        "boolean": "true or false",
        "object": "a mapping",
    }
    taken = kind.get(schema.get("type", ""), "a value")
    return f"{name} takes {taken}" + (f" {' and '.join(limits)}" if limits else "")


def check_rules(
    path: str | Path, registry: HandlerRegistry | None = None
) -> tuple[RuleSet | None, list[RuleProblem]]:
    """Load rules and return them with every problem found (rules None if any)."""
    registry = registry or HandlerRegistry()
    root = Path(path)
    if root.is_dir():
        # Hidden files are editors' and tools' own (an editor's lock file
        # is often a dangling `.#name.yaml` link). Anything else with a rule
        # suffix is read, so that a broken link or an unreadable file is a
        # problem reported, not a file silently left out.
        files = sorted(
            p
            for p in root.iterdir()
            if p.suffix in RULE_SUFFIXES
            and not p.name.startswith(".")
            and not p.is_dir()
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
    settings_file: str | None = None
    tiers_file: str | None = None
    # Where each rule name was first written: file, line, column.
    seen: dict[str, tuple[str, int, int]] = {}
    # Where the values that cross-file checks report are written: time
    # spans, tier names; by (rule name or section, label).
    spans: dict[tuple[str, str], tuple[int, int]] = {}
    # The actions of every rule, valid or not, whose tier names are
    # checked once every file's tiers are known.
    tier_changes: list[
        tuple[_FileResult, int, str | None, list[tuple[int, ActionSpec]]]
    ] = []
    digest = hashlib.sha256()

    for file in files:
        result = _parse_file(file)
        digest.update(file.name.encode() + b"\0" + result.content + b"\0")
        problems += result.problems

        # File-level sections
        if result.parsed is not None and result.parsed.tiers:
            if tiers:
                line, column = result.marks.locate_key(("tiers",))
                problems.append(
                    RuleProblem(
                        result.path,
                        line,
                        column,
                        None,
                        "Tiers are defined in more than one file.",
                        f"keep the tiers in one file; {tiers_file} has them too",
                    )
                )
            else:
                tiers_file = result.path
            tiers.update(result.parsed.tiers)
        if result.parsed is not None and result.parsed.settings is not None:
            if settings is not None:
                line, column = result.marks.locate_key(("settings",))
                problems.append(
                    RuleProblem(
                        result.path,
                        line,
                        column,
                        None,
                        "Settings are defined in more than one file.",
                        f"keep the settings in one file; {settings_file} has them too",
                    )
                )
            settings = result.parsed.settings
            spans[("settings", "initial_tier")] = result.marks.locate(
                ("settings", "initial_tier")
            )
            settings_file = result.path

        # Invalid rules are left out of the set, but what is valid of
        # them is checked like a valid rule.
        for index, salvage in result.salvaged:
            if salvage.spec is not None:
                problems += _check_rule(result, index, salvage.spec, registry)
            else:
                problems += _condition_problems(
                    result, index, salvage.name, salvage.conditions
                )
                problems += _check_actions(
                    result,
                    index,
                    salvage.name,
                    salvage.actions,
                    registry,
                    _Roots(ROOTS),
                )
            tier_changes.append((result, index, salvage.name, salvage.actions))

        for index, spec in result.rules:
            line, column = result.marks.locate(("rules", index))
            problems += _check_rule(result, index, spec, registry)
            actions = list(enumerate(spec.actions))
            tier_changes.append((result, index, spec.name, actions))
            loaded = LoadedRule(spec, result.path, line, len(rules))
            nline, ncol = result.marks.locate(("rules", index, "name"))
            if spec.name in seen:
                problems += _name_clash(spec.name, seen, (result.path, nline, ncol))
                continue
            seen[spec.name] = (result.path, nline, ncol)
            rules.append(loaded)
            for label, where in _SPAN_PATHS.items():
                spans[(spec.name, label)] = result.marks.locate(
                    ("rules", index, *where)
                )

    settings = settings or Settings()
    problems += _check_cross_file(rules, tiers, settings, spans, settings_file)
    for result, index, name, actions in tier_changes:
        problems += _check_tier_changes(result, index, name, actions, tiers)
    if problems:
        return None, problems
    rules = [_escape_templates(rule, registry) for rule in rules]
    version = digest.hexdigest()[:12]
    return RuleSet(rules, tiers, settings, version, [str(f) for f in files]), []


def _escape_templates(rule: LoadedRule, registry: HandlerRegistry) -> LoadedRule:
    """Give each action's templated parameters the escapes its handler names.

    The parameters keep their text; `engine.templates.render` passes what
    it inserts into them through the escape.
    """
    actions = list(rule.spec.actions)
    for position, action in enumerate(actions):
        handler = registry.handler_class(action.action)
        escapes = {
            key: escape
            for key, escape in handler.template_escapes.items()
            if find_placeholders(action.params.get(key))
        }
        if escapes:
            params = EscapingParams(action.params, escapes)
            actions[position] = action.model_copy(update={"params": params})

    # Compared by identity: escaping parameters equal the plain ones.
    if all(a is b for a, b in zip(actions, rule.spec.actions, strict=True)):
        return rule
    return replace(rule, spec=rule.spec.model_copy(update={"actions": actions}))


def _check_rule(
    result: _FileResult, index: int, spec: RuleSpec, registry: HandlerRegistry
) -> list[RuleProblem]:
    """Return the problems of one rule that its model does not catch."""
    problems = _condition_problems(result, index, spec.name, check_conditions(spec))
    problems += _check_event_types(result, index, spec)
    problems += _check_reachable(result, index, spec)
    actions = list(enumerate(spec.actions))
    roots = _roots_of(spec)
    problems += _check_actions(result, index, spec.name, actions, registry, roots)
    return problems


def _condition_problems(
    result: _FileResult,
    index: int,
    name: str | None,
    found: list[tuple[tuple[str | int, ...], str]],
) -> list[RuleProblem]:
    """Locate the problems of a rule's conditions in its file."""
    problems: list[RuleProblem] = []
    for where, message in found:
        # A condition's path ends at the key in question: an operator, a
        # field path, `all` or `any`.
        line, column = result.marks.locate_key(("rules", index, *where))
        problems.append(RuleProblem(result.path, line, column, name, message))
    return problems


def _check_tier_changes(
    result: _FileResult,
    index: int,
    rule: str | None,
    actions: list[tuple[int, ActionSpec]],
    tiers: dict[str, TierConfig],
) -> list[RuleProblem]:
    """Report a change_tier whose tier is not defined under `tiers`."""
    problems: list[RuleProblem] = []
    for position, action in actions:
        target = action.params.get("to")
        if (
            action.action != "change_tier"
            or not isinstance(target, str)
            or "{{" in target
            or target in tiers
        ):
            continue
        line, column = result.marks.locate(
            ("rules", index, "actions", position, "params", "to")
        )
        problems.append(
            RuleProblem(
                result.path,
                line,
                column,
                rule,
                f"change_tier names the tier {target!r}, which is not "
                "defined under 'tiers'.",
                _tier_hint(tiers),
            )
        )
    return problems


def _tier_hint(tiers: dict[str, TierConfig]) -> str:
    return "define it under 'tiers'" + (
        f" or use one of {', '.join(tiers)}" if tiers else ""
    )


def _name_clash(
    name: str,
    seen: dict[str, tuple[str, int, int]],
    here: tuple[str, int, int],
) -> list[RuleProblem]:
    """Report a repeated name at both places, each pointing at the other."""
    first = seen[name]
    message = "Two rules share this name."
    return [
        RuleProblem(*here, name, message, f"the other is at {_at(first)}; rename one"),
        RuleProblem(*first, name, message, f"the other is at {_at(here)}; rename one"),
    ]


def _at(place: tuple[str, int, int]) -> str:
    return f"{place[0]}:{place[1]}:{place[2]}"


def _check_event_types(
    result: _FileResult, index: int, spec: RuleSpec
) -> list[RuleProblem]:
    """Report event types that no event could carry.

    A namespaced type that the platform does not know is accepted: custom
    events are generic events. A bare word is refused rather than warned
    about, because a rule that reads a misspelt type loads fine and then
    silently never fires.
    """
    where: list[tuple[tuple[str | int, ...], list[str]]] = [(("on",), spec.on or [])]
    if spec.aggregate is not None:
        where += [
            (("aggregate", "plus"), spec.aggregate.plus),
            (("aggregate", "minus"), spec.aggregate.minus),
        ]
    if spec.correlate is not None:
        where += [
            (("correlate", "first", "on"), spec.correlate.first.on),
            (("correlate", "then", "on"), spec.correlate.then.on),
        ]
    problems: list[RuleProblem] = []
    for path, types in where:
        for position, event_type in enumerate(types):
            if event_type in DATA_MODELS or _NAMESPACED_TYPE.match(event_type):
                continue
            line, column = result.marks.locate(("rules", index, *path, position))
            close = difflib.get_close_matches(event_type, list(DATA_MODELS), n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else "name a custom type like 'billing.invoice_paid'"
            )
            problems.append(
                RuleProblem(
                    result.path,
                    line,
                    column,
                    spec.name,
                    f"The event type {event_type!r} is neither a platform event "
                    "type nor namespaced like 'source.event', so no event "
                    "would match it.",
                    hint,
                )
            )
    return problems


def _check_reachable(
    result: _FileResult, index: int, spec: RuleSpec
) -> list[RuleProblem]:
    """Report a threshold that a count can never cross."""
    aggregate, threshold = spec.aggregate, spec.threshold
    if aggregate is None or threshold is None or threshold.below is None:
        return []
    if aggregate.fn not in ("count", "distinct") or threshold.below > 0:
        return []
    line, column = result.marks.locate(("rules", index, "threshold", "below"))
    return [
        RuleProblem(
            result.path,
            line,
            column,
            spec.name,
            f"A {aggregate.fn} is never below {threshold.below:g}, so the rule "
            "could never fire.",
            "use a bound above 0; 'below: 1' fires when no event came",
        )
    ]


def _check_cross_file(
    rules: list[LoadedRule],
    tiers: dict[str, TierConfig],
    settings: Settings,
    spans: dict[tuple[str, str], tuple[int, int]] | None = None,
    settings_file: str | None = None,
) -> list[RuleProblem]:
    problems: list[RuleProblem] = []
    places = spans or {}
    retention = settings.state_retention
    if settings.initial_tier is not None and settings.initial_tier not in tiers:
        line, column = places.get(("settings", "initial_tier"), (1, 1))
        problems.append(
            RuleProblem(
                settings_file or "settings",
                line,
                column,
                None,
                f"The initial tier {settings.initial_tier!r} is not defined "
                "under 'tiers'.",
                _tier_hint(tiers),
            )
        )
    for loaded in rules:
        spec = loaded.spec
        lengths = []
        if spec.aggregate is not None and spec.aggregate.window is not None:
            lengths.append(("window", spec.aggregate.window))
        if spec.correlate is not None:
            lengths.append(("correlate.within", spec.correlate.within))
        for label, seconds in lengths:
            if seconds > retention:
                line, column = (spans or {}).get((spec.name, label), (loaded.line, 1))
                problems.append(
                    RuleProblem(
                        loaded.file,
                        line,
                        column,
                        spec.name,
                        f"The {label} of {format_duration(seconds)} is longer "
                        "than the state retention of "
                        f"{format_duration(retention)}, so its state would be "
                        "dropped too early.",
                        "shorten it or raise settings.state_retention",
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
                        f"The bands {', '.join(unknown)} are not tiers, but the "
                        "rule changes the tier to its band.",
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
