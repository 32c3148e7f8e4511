"""Tests of the `rules-engine run` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.cli import main
from infra.pubsub import PubSubPublisher, PubSubSource, provision

ROOT = Path(__file__).parents[2]
_CASES = yaml.safe_load(
    (ROOT / "tests/fixtures/worker/invalid_run_options.yaml").read_text()
)["cases"]


@pytest.mark.parametrize("case", _CASES, ids=[case["name"] for case in _CASES])
def test_invalid_options_stop_the_worker_before_it_connects(
    case: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad option exits 2 with a last line that names it."""
    argv = ["run", "--project=p", "--subscription=s", f"--rules={ROOT / 'rules'}"]

    # argparse exits on its own for a number it refuses.
    try:
        status = main([*argv, *case["args"]])
    except SystemExit as stop:
        status = stop.code

    assert status == 2
    assert capsys.readouterr().err.splitlines()[-1] == case["error"]


@pytest.mark.emulator
def test_a_missing_dead_letter_topic_stops_the_worker_before_it_pulls(
    pubsub_emulator_host: str,
    firestore_emulator_host: str,
    project_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A dead-letter topic that does not exist is named in a one-line error."""
    provision(project_id, "events", "engine", "dead-letters", "dead-letters-kept")
    argv = [
        "run",
        f"--project={project_id}",
        "--subscription=engine",
        f"--rules={ROOT / 'rules'}",
        "--dead-letter-topic=no-such-topic",
        "--exit-when-idle=1",
        "--no-watch-rules",
    ]

    status = main(argv)

    assert status == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: The dead-letter topic projects/{project_id}/topics/no-such-topic "
        "does not exist; create it (provision does) or name an existing one."
    )


@pytest.mark.emulator
def test_rejected_messages_go_to_the_subscriptions_dead_letter_topic(
    pubsub_emulator_host: str,
    firestore_emulator_host: str,
    project_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --dead-letter-topic, the one of the subscription's policy is used."""
    provision(project_id, "events", "engine", "dead-letters", "dead-letters-kept")
    with PubSubPublisher(project_id) as publisher:
        publisher.publish("events", [(b"{not json", {})])
    argv = [
        "run",
        f"--project={project_id}",
        "--subscription=engine",
        f"--rules={ROOT / 'rules'}",
        "--exit-when-idle=2",
        "--no-watch-rules",
    ]

    status = main(argv)
    with PubSubSource(project_id, "dead-letters-kept") as source:
        dead_letters = source.pull(max_messages=10, timeout=5)

    assert status == 0, capsys.readouterr().err
    assert [(m.data, m.attributes["reason"]) for m in dead_letters] == [
        (b"{not json", "invalid_json")
    ]


@pytest.mark.emulator
def test_a_missing_announcement_topic_stops_the_worker_before_it_pulls(
    pubsub_emulator_host: str,
    firestore_emulator_host: str,
    project_id: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A publish_topic missing in the configuration's project is named at start."""
    provision(project_id, "events", "engine", "dead-letters", "dead-letters-kept")
    config = tmp_path / "config.yaml"
    config.write_text(
        "project: other-project\nhandlers:\n  scale: {publish_topic: scaling}\n"
    )
    argv = [
        "run",
        f"--project={project_id}",
        "--subscription=engine",
        f"--rules={ROOT / 'rules'}",
        f"--config={config}",
        "--exit-when-idle=1",
        "--no-watch-rules",
    ]

    status = main(argv)

    assert status == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: The scale announcement topic of {str(config)!r} "
        "projects/other-project/topics/scaling does not exist; create it "
        "(provision does) or name an existing one."
    )
