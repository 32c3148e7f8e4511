"""Measure engine replay against raw durable-rules on the AMZN stream.

Three modes, each run in a fresh process so that peak RSS belongs to one
mode; the modes alternate over `--rounds` rounds and each keeps its best:

- engine: `replay_stream` with the shipped rules (parse, validate, match,
  windows, actions, action file);
- post: each line parsed with `json.loads`, projected to the same flat fact
  the engine builds, and given to durable-rules' `post()` under the same
  compiled conditions, catching `MessageNotHandledException`;
- post_batch: the same facts through `post_batch()` in batches of 1,000.

The last line is `ratio_vs_durable_post=<engine events/s / post events/s>`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AMZN = ROOT / "data/nab/data/realTweets/Twitter_volume_AMZN.csv"
STREAM = ROOT / "out/bench-amzn.jsonl"


def build_stream() -> None:
    """Turn the AMZN counts into contribution.created events, once."""
    if STREAM.exists():
        return
    STREAM.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "import-csv",
            str(AMZN),
            "--out",
            str(STREAM),
            "--type",
            "contribution.created",
            "--counts",
            "--id-prefix",
            "amzn",
        ],
        check=True,
        cwd=ROOT,
    )


def peak_rss_mb() -> float:
    """Return this process's peak resident set size in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_engine(events: Path) -> dict[str, float]:
    from engine.loader import load_rules
    from engine.replay import replay_stream

    ruleset = load_rules(ROOT / "rules")
    with open(ROOT / "out/bench-actions.jsonl", "wb") as actions:
        summary = replay_stream(events, ruleset, actions_out=actions)
    return {
        "events": summary.read,
        "seconds": summary.seconds,
        "actions": sum(summary.engine.actions.values()),
        "fires": sum(summary.engine.fires.values()),
    }


def _durable_host() -> tuple[object, str, dict[str, list[tuple[str, str]]], list[int]]:
    from durable import engine as durable_engine

    from engine.compiler import compile_rules
    from engine.loader import load_rules

    compiled = compile_rules(load_rules(ROOT / "rules"))
    fired = [0]

    def count(_: object) -> None:
        fired[0] += 1

    definition = {
        name: {**rule, "run": count} for name, rule in compiled.definition.items()
    }
    host = durable_engine.Host()
    host.register_rulesets({"bench": definition})
    paths = {t: route.paths for t, route in compiled.routes.items()}
    return host, "bench", paths, fired


def _fact(line: str, paths: dict[str, list[tuple[str, str]]]) -> dict[str, object]:
    event = json.loads(line)
    fact: dict[str, object] = {"k": "e", "t": event["type"], "id": event["id"]}
    for path, key in paths.get(event["type"], []):
        value: object = event
        for step in path.split("."):
            value = value.get(step) if isinstance(value, dict) else None
        if value is not None:
            fact[key] = value
    return fact


def run_post(events: Path, batch: int) -> dict[str, float]:
    from durable.engine import MessageNotHandledException, MessageObservedException

    refused = (MessageNotHandledException, MessageObservedException)

    host, name, paths, fired = _durable_host()
    count = 0
    errors = 0
    started = time.perf_counter()
    pending: list[dict[str, object]] = []
    with open(events) as stream:
        for line in stream:
            count += 1
            fact = _fact(line, paths)
            if batch == 1:
                try:
                    host.post(name, fact)  # type: ignore[attr-defined]
                except refused:
                    errors += 1
                continue
            pending.append(fact)
            if len(pending) == batch:
                try:
                    host.post_batch(name, pending)  # type: ignore[attr-defined]
                except refused:
                    errors += 1
                pending = []
    if pending:
        try:
            host.post_batch(name, pending)  # type: ignore[attr-defined]
        except refused:
            errors += 1
    return {
        "events": count,
        "seconds": time.perf_counter() - started,
        "fires": fired[0],
        "not_handled": errors,
    }


def run_mode(mode: str, events: Path) -> dict[str, float]:
    """Run one mode in this process and add its peak RSS."""
    if mode == "engine":
        result = run_engine(events)
    elif mode == "post":
        result = run_post(events, 1)
    else:
        result = run_post(events, 1000)
    result["events_per_second"] = result["events"] / result["seconds"]
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=("engine", "post", "post_batch"))
    parser.add_argument("--events", type=Path, default=STREAM)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each mode")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.events)))
        return 0

    build_stream()
    # Modes alternate over the rounds and each keeps its best run, so that
    # a burst of load from another process cannot favour one side.
    results: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for mode in ("engine", "post", "post_batch"):
            output = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--mode",
                    mode,
                    "--events",
                    str(args.events),
                ],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
            ).stdout
            result = json.loads(output.strip().splitlines()[-1])
            best = results.get(mode)
            if best is None or result["events_per_second"] > best["events_per_second"]:
                results[mode] = result
    print(
        f"{'mode':<12}{'events':>10}{'events/s':>12}{'peak RSS MiB':>14}{'fires':>10}"
    )
    for mode, result in results.items():
        print(
            f"{mode:<12}{result['events']:>10.0f}{result['events_per_second']:>12.0f}"
            f"{result['peak_rss_mb']:>14.1f}{result['fires']:>10.0f}"
        )
    engine_rate = results["engine"]["events_per_second"]
    batch_ratio = engine_rate / results["post_batch"]["events_per_second"]
    post_ratio = engine_rate / results["post"]["events_per_second"]
    print(f"ratio_vs_durable_post_batch={batch_ratio:.2f}")
    print(f"ratio_vs_durable_post={post_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
