"""Tests of the argument types that refuse numbers an option cannot take."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.cli import main
from engine.commands.arguments import positive_number, whole_number

FIXTURES = Path(__file__).parents[1] / "fixtures"
CASES = yaml.safe_load(
    (FIXTURES / "commands" / "invalid_numbers.yaml").read_text(encoding="utf-8")
)["cases"]
PLACES = {
    "{stream}": str(FIXTURES / "streams" / "golden.jsonl"),
    "{csv}": str(FIXTURES / "csv" / "counts.csv"),
}


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_a_nonsensical_number_stops_the_command_naming_its_option(
    case: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """argparse exits 2 before the command runs, with the option's name."""
    argv = [PLACES.get(arg, arg) for arg in case["args"]]
    # Should a value get through, the Google clients reach a closed local
    # port rather than Google Cloud.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")

    with pytest.raises(SystemExit) as stopped:
        main(argv)

    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == case["error"]


@pytest.mark.parametrize(
    ("parse", "text", "value"),
    [
        (whole_number(0), "0", 0),
        (whole_number(1), "+7", 7),
        (whole_number(10, 600), "600", 600),
        (whole_number(0, 65535), " 8080 ", 8080),
        (positive_number, "0.25", 0.25),
        (positive_number, "1e-3", 0.001),
        (positive_number, "30", 30.0),
    ],
)
def test_a_number_within_its_bounds_is_taken(
    parse: Callable[[str], float], text: str, value: float
) -> None:
    """Bounds are inclusive for whole numbers; any finite number above 0 does."""
    assert parse(text) == value


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (whole_number(1), "1.5", "'1.5' is not a whole number of at least 1."),
        (whole_number(1), "", "'' is not a whole number of at least 1."),
        (whole_number(10, 600), "601", "'601' is not a whole number from 10 to 600."),
        (positive_number, "-0.5", "'-0.5' is not a finite number above 0."),
        (positive_number, "-inf", "'-inf' is not a finite number above 0."),
        (positive_number, "fast", "'fast' is not a finite number above 0."),
    ],
)
def test_a_number_out_of_its_bounds_is_refused_in_a_sentence(
    parse: Callable[[str], float], text: str, message: str
) -> None:
    """The message says what was written and what the option takes."""
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        parse(text)

    assert str(refused.value) == message
