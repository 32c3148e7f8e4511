"""`rules-engine validate`: report every problem of a directory of rules."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

import orjson

from engine.errors import RuleProblem
from engine.loader import check_rules

__all__ = ["register", "render_problems"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare the `validate` command."""
    parser = subparsers.add_parser(
        "validate",
        help="check rule files and report every problem",
        description=(
            "Check every rule file of a directory and report each problem as "
            "file:line:col with the rule, the message and a hint. Exits 1 when "
            "any problem is found."
        ),
    )
    parser.add_argument("rules", metavar="DIR", help="directory of rule files")
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="output format (default: text)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check the rules, print the findings and return 1 if there are any."""
    ruleset, problems = check_rules(args.rules)
    ordered = sorted(problems, key=lambda p: (p.file, p.line, p.column))
    if args.format == "json":
        report: dict[str, Any] = {
            "valid": ruleset is not None,
            "problems": [asdict(problem) for problem in ordered],
        }
        if ruleset is not None:
            report |= {
                "rules": len(ruleset.rules),
                "files": len(ruleset.files),
                "version": ruleset.version,
            }
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    elif ruleset is None:
        print(render_problems(ordered))
    else:
        rules = _count(len(ruleset.rules), "rule")
        files = _count(len(ruleset.files), "file")
        verb = "is" if len(ruleset.rules) == 1 else "are"
        print(f"{rules} in {files} {verb} valid (version {ruleset.version}).")
    return 0 if ruleset is not None else 1


def render_problems(problems: list[RuleProblem]) -> str:
    """Return one line per problem and a closing count."""
    files = _count(len({problem.file for problem in problems}), "file")
    lines = [str(problem) for problem in problems]
    lines.append(f"{_count(len(problems), 'problem')} in {files}.")
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
