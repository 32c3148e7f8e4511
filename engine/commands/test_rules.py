"""`rules-engine test`: run rule tests written in YAML."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import ConfigurationError
from engine.rule_tests import render_result, run_test_files

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare the `test` command."""
    parser = subparsers.add_parser(
        "test",
        help="run rule tests: events in, expected actions out",
        description=(
            "Run the cases of rule test files (YAML with a 'tests' list) and "
            "print PASS, FAIL or ERROR for each, with the differences between "
            "the expected and the actual actions; ERROR is a case that could "
            "not run, such as one whose rules do not load. Exits 1 when any "
            "case fails or is an error."
        ),
    )
    parser.add_argument("path", help="a rule test file, or a directory of them")
    parser.add_argument(
        "--rules",
        help="rules directory for cases that name none (default: the "
        "directory above the test file's)",
    )
    parser.set_defaults(run=run, default_log_level="warning")


def run(args: argparse.Namespace) -> int:
    """Run the tests and return 1 if any case failed or could not run."""
    root = Path(args.path)
    if root.is_dir():
        paths = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml"))
    elif root.is_file():
        paths = [root]
    else:
        raise ConfigurationError(f"The rule test path {args.path!r} does not exist.")
    if not paths:
        raise ConfigurationError(f"The directory {args.path!r} holds no .yaml files.")

    # A case that could not run (its rules or its file did not load) is
    # an error, not a failure: the rules were never checked against it.
    counts = {"pass": 0, "fail": 0, "error": 0}
    for result in run_test_files(paths, args.rules):
        print(render_result(result))
        counts[result.status] += 1
    errors = "1 error" if counts["error"] == 1 else f"{counts['error']} errors"
    print(f"{counts['pass']} passed, {counts['fail']} failed, {errors}")
    return 1 if counts["fail"] or counts["error"] else 0
