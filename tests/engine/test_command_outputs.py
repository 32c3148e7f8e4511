"""Tests of the output files that commands check before they start."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.cli import main
from engine.commands.outputs import prepare_output
from engine.errors import ConfigurationError

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
CASES = yaml.safe_load(
    (FIXTURES / "commands" / "blocked_outputs.yaml").read_text(encoding="utf-8")
)["cases"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_an_output_under_a_file_stops_the_command_naming_both(
    case: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exit 2 and one line naming the output and the file in its way."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder\n")
    places = {
        "{file}": str(blocker),
        "{tmp}": str(tmp_path),
        "{stream}": str(FIXTURES / "streams" / "golden.jsonl"),
        "{csv}": str(FIXTURES / "csv" / "counts.csv"),
    }

    def place(text: str) -> str:
        for mark, value in places.items():
            text = text.replace(mark, value)
        return text

    # Should a command get past its outputs, the Google clients reach a
    # closed local port rather than Google Cloud.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")
    monkeypatch.chdir(ROOT)

    status = main(["--log-level", "warning", *map(place, case["args"])])

    assert status == 2
    assert capsys.readouterr().err == (
        f"error: The output {place(case['output'])!r} cannot be created: "
        f"{str(blocker)!r} is not a directory.\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_missing_folders_of_an_output_are_made(tmp_path: Path) -> None:
    """The folders on the way are created; the file itself is not."""
    name = tmp_path / "out" / "deeper" / "actions.jsonl"

    prepared = prepare_output(str(name))

    assert prepared == name
    assert (name.parent.is_dir(), name.exists()) == (True, False)


@pytest.mark.parametrize(
    ("make", "name", "message"),
    [
        pytest.param(
            lambda tmp: (tmp / "out").mkdir(),
            "out",
            "The output '{tmp}/out' is a directory, not a file.",
            id="a directory",
        ),
        pytest.param(
            lambda tmp: (tmp / "link").symlink_to(tmp / "missing"),
            "link/a.jsonl",
            "The output '{tmp}/link/a.jsonl' cannot be created: '{tmp}/link' is "
            "not a directory.",
            id="a broken link as its folder",
        ),
    ],
)
def test_an_output_that_cannot_be_a_file_is_refused(
    tmp_path: Path, make: Callable[[Path], object], name: str, message: str
) -> None:
    """A directory, or a folder that mkdir cannot make, is named as such."""
    make(tmp_path)

    with pytest.raises(ConfigurationError) as refused:
        prepare_output(tmp_path / name)

    assert str(refused.value) == message.replace("{tmp}", str(tmp_path))
