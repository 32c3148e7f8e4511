"""Tests of the `rules-engine` command line: exit status, output and messages.

Most run `replay` in a fresh interpreter, as operators do; the errors of
commands that reach Google Cloud are checked in process, where the
credential lookup can be made to fail without looking anywhere.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import google.auth
import pytest
from google.auth.exceptions import DefaultCredentialsError

from engine.cli import build_parser, main

ROOT = Path(__file__).parents[2]
STREAMS = ROOT / "tests" / "fixtures" / "streams"
GOLDEN = STREAMS / "golden.jsonl"
BROKEN_RULES = (
    ROOT / "tests" / "fixtures" / "rules" / "invalid" / "several_broken_rules.yaml"
)


def run_replay(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the replay command in a fresh interpreter, as operators do."""
    return subprocess.run(
        [sys.executable, "-m", "engine", "replay", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_replay_succeeds_and_writes_its_outputs(tmp_path: Path) -> None:
    """Exit 0, the golden actions, the dead letters and the summary."""
    actions = tmp_path / "out" / "actions.jsonl"
    dead = tmp_path / "out" / "dead.jsonl"

    done = run_replay(
        GOLDEN,
        "--rules",
        ROOT / "rules",
        "--actions-out",
        actions,
        "--dead-letter-out",
        dead,
        "--no-progress",
    )

    assert done.returncode == 0, done.stderr
    assert actions.read_bytes() == (STREAMS / "golden-actions.jsonl").read_bytes()
    assert [json.loads(line)["line"] for line in dead.read_text().splitlines()] == [
        8,
        9,
        10,
        11,
        12,
    ]
    assert done.stdout.splitlines()[0] == (
        "events: read 36, accepted 31, rejected 5, duplicates 1, "
        "emitted by the engine 1"
    )


def test_a_missing_events_file_fails_and_names_it(tmp_path: Path) -> None:
    """Non-zero exit, a message naming the file, and no output clobbered."""
    missing = tmp_path / "no-such-stream.jsonl"
    actions = tmp_path / "actions.jsonl"
    actions.write_text("kept\n")

    done = run_replay(missing, "--rules", ROOT / "rules", "--actions-out", actions)

    assert done.returncode == 2
    assert done.stderr.strip() == f"error: The event file '{missing}' does not exist."
    assert actions.read_text() == "kept\n"


def test_rules_that_fail_to_load_stop_the_replay(tmp_path: Path) -> None:
    """Non-zero exit; every problem is listed with its file, line and column."""
    rules = tmp_path / "rules"
    rules.mkdir()
    shutil.copy(BROKEN_RULES, rules)
    broken = rules / BROKEN_RULES.name
    actions = tmp_path / "actions.jsonl"

    done = run_replay(GOLDEN, "--rules", rules, "--actions-out", actions)

    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == "error: The rules did not load: 3 problems."
    assert [line.split(": rule ")[0].strip() for line in lines[1:]] == [
        f"{broken}:5:5",
        f"{broken}:18:15",
        f"{broken}:26:17",
    ]
    assert not actions.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--rules", "{tmp}/nowhere", "--actions-out", "{tmp}/a.jsonl"],
            "{tmp}/nowhere:1:1: The rules path does not exist.",
        ),
        (
            ["--actions-out", "{tmp}/a.jsonl"],
            "the following arguments are required: --rules",
        ),
        (["--rules", "rules"], "the following arguments are required: --actions-out"),
    ],
)
def test_a_wrong_command_line_fails_and_says_why(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """A missing rules directory or argument gives exit 2 and a reason."""
    done = run_replay(GOLDEN, *(a.replace("{tmp}", str(tmp_path)) for a in args))

    assert done.returncode == 2
    assert message.replace("{tmp}", str(tmp_path)) in done.stderr


def test_a_file_error_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """A file the system cannot open is named, without a traceback."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)

    done = subprocess.run(
        [sys.executable, "-m", "engine", "schema", "--out", str(loop)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert done.stderr == f"error: Too many levels of symbolic links '{loop}'.\n"


def test_a_truncated_stream_prints_its_summary_then_the_error(tmp_path: Path) -> None:
    """What was read before the damage is reported, and the exit is non-zero."""
    packed = gzip.compress(GOLDEN.read_bytes())
    stream = tmp_path / "golden.jsonl.gz"
    stream.write_bytes(packed[: len(packed) * 2 // 3])

    done = run_replay(
        stream, "--rules", ROOT / "rules", "--actions-out", tmp_path / "a.jsonl"
    )

    assert done.returncode == 2
    assert done.stdout.startswith("events: read ")
    assert done.stderr.startswith(f"error: The event file '{stream}' could not be read")
    assert "Compressed file ended before the end-of-stream marker" in done.stderr


@pytest.mark.parametrize("output", ["--actions-out", "--dead-letter-out"])
def test_an_output_that_is_the_input_is_refused(tmp_path: Path, output: str) -> None:
    """Opening an output truncates it: the event file must survive."""
    stream = tmp_path / "golden.jsonl"
    shutil.copy(GOLDEN, stream)
    other = tmp_path / "a.jsonl"
    args = ["--actions-out", other, "--dead-letter-out", tmp_path / "d.jsonl"]
    args[args.index(output) + 1] = stream

    done = run_replay(stream, "--rules", ROOT / "rules", *args)

    assert done.returncode == 2
    assert done.stderr == (
        f"error: The output '{stream}' is also the event file or the other "
        "output; give each its own file.\n"
    )
    assert stream.read_bytes() == GOLDEN.read_bytes()


def test_a_directory_as_the_event_file_is_named_as_such(tmp_path: Path) -> None:
    """A directory is not reported as missing."""
    done = run_replay(
        tmp_path, "--rules", ROOT / "rules", "--actions-out", tmp_path / "a.jsonl"
    )

    assert done.returncode == 2
    assert done.stderr == (
        f"error: The event file '{tmp_path}' is a directory, not a file.\n"
    )


# Commands that build a Google client, with the arguments that get them there.
_GOOGLE_COMMANDS = [
    pytest.param(
        ["provision", "--project", "p", "--topic", "events", "--subscription", "e"],
        id="provision",
    ),
    pytest.param(
        ["publish", str(GOLDEN), "--project", "p", "--topic", "events"],
        id="publish",
    ),
    pytest.param(
        ["record", "--project", "p", "--subscription", "e", "--out", "{tmp}/r.jsonl"],
        id="record",
    ),
    pytest.param(
        [
            "run",
            "--project",
            "p",
            "--subscription",
            "e",
            "--rules",
            str(ROOT / "rules"),
        ],
        id="run",
    ),
    pytest.param(["explain", "a-1", "--project", "p"], id="explain"),
]


@pytest.fixture
def credentials_lookup(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Make Google's credential lookup fail here, without asking any server."""
    for name in (
        "PUBSUB_EMULATOR_HOST",
        "FIRESTORE_EMULATOR_HOST",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ):
        monkeypatch.delenv(name, raising=False)
    # Should anything still probe for a metadata server, it stays on loopback.
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")

    def no_credentials(*args: object, **kwargs: object) -> None:
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    return monkeypatch


@pytest.mark.parametrize("command", _GOOGLE_COMMANDS)
def test_missing_google_credentials_are_one_line_saying_what_to_set(
    command: list[str],
    credentials_lookup: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No traceback: exit 2 and a line naming the variables to set."""
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in command]

    status = main(["--log-level", "warning", *argv])

    assert status == 2
    assert capsys.readouterr().err == (
        "error: No Google credentials were found; set "
        "GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or "
        "PUBSUB_EMULATOR_HOST and FIRESTORE_EMULATOR_HOST to use the emulators.\n"
    )


def test_an_unusable_credentials_file_is_named_with_the_reason(
    credentials_lookup: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A key file that cannot be used is named, not reported as missing."""
    key_file = tmp_path / "key.json"
    credentials_lookup.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))

    def unusable(*args: object, **kwargs: object) -> None:
        raise DefaultCredentialsError(
            f"File {key_file} is not a valid json file.", ValueError("line 1")
        )

    credentials_lookup.setattr(google.auth, "default", unusable)

    status = main(
        ["provision", "--project", "p", "--topic", "t", "--subscription", "e"]
    )

    assert status == 2
    assert capsys.readouterr().err == (
        "error: The Google credentials in GOOGLE_APPLICATION_CREDENTIALS "
        f"({str(key_file)!r}) could not be used: File {key_file} is not a valid "
        "json file.\n"
    )


@pytest.mark.parametrize("level", ["nope", "warn", ""])
def test_an_unknown_log_level_is_refused_with_the_known_ones(
    level: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A level outside the five names is a usage error, not a silent info."""
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(["--log-level", level, "validate", "rules"])

    assert raised.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"rules-engine: error: argument --log-level: invalid choice: {level!r} "
        "(choose from 'debug', 'info', 'warning', 'error', 'critical')"
    )


@pytest.mark.parametrize(
    ("level", "parsed"), [("debug", "debug"), ("WARNING", "warning")]
)
def test_a_log_level_is_read_in_either_case(level: str, parsed: str) -> None:
    """Upper case names the same level, as the logging module writes it."""
    args = build_parser().parse_args(["--log-level", level, "validate", "rules"])

    assert args.log_level == parsed
