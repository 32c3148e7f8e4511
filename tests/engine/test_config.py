"""Tests of the backend configuration: loading, messages and wiring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config import EngineConfig, build_registry, load_config
from engine.errors import ConfigurationError
from handlers.base import ActionRequest, Handler, HandlerContext
from handlers.cache import InvalidateCacheHandler, MemoryCache
from handlers.notify import NotifyHandler
from handlers.registry import builtin_handler_classes

FIXTURES = Path(__file__).parents[1] / "fixtures" / "config"
VALID = yaml.safe_load((FIXTURES / "valid.yaml").read_text())["cases"]
INVALID = yaml.safe_load((FIXTURES / "invalid.yaml").read_text())["cases"]
SHIPPED = sorted((Path(__file__).parents[2] / "config").glob("*.yaml"))


def write_config(directory: Path, case: dict[str, Any]) -> Path | None:
    """Write the case's file, if it has one, and return its path."""
    if "file" not in case:
        return None
    path = directory / "engine.yaml"
    path.write_text(case["file"])
    return path


def setting(config: EngineConfig, dotted: str) -> Any:
    """Return a setting by its dotted path, as plain data."""
    value: Any = config.model_dump()
    for step in dotted.split("."):
        value = value[step]
    return value


@pytest.mark.parametrize("case", VALID, ids=[case["name"] for case in VALID])
def test_valid_configuration_gives_its_settings(
    case: dict[str, Any], tmp_path: Path
) -> None:
    """Each valid case loads with exactly the expected settings."""
    path = write_config(tmp_path, case)

    config = load_config(
        path, environ=case.get("env", {}), handler_names=case.get("handlers")
    )

    actual = {dotted: setting(config, dotted) for dotted in case["expect"]}
    assert actual == case["expect"]


@pytest.mark.parametrize("case", INVALID, ids=[case["name"] for case in INVALID])
def test_invalid_configuration_names_file_line_and_setting(
    case: dict[str, Any], tmp_path: Path
) -> None:
    """Each invalid case fails with its exact message."""
    path = write_config(tmp_path, case)

    with pytest.raises(ConfigurationError) as caught:
        load_config(path, environ=case.get("env", {}))

    assert str(caught.value) == case["message"].format(file=path)


def test_missing_file_is_named() -> None:
    """A file that does not exist is a configuration error naming it."""
    with pytest.raises(ConfigurationError) as caught:
        load_config("/nonexistent/engine.yaml", environ={})

    assert str(caught.value) == (
        "The configuration file '/nonexistent/engine.yaml' does not exist."
    )


def test_file_comes_from_the_environment_without_an_argument(tmp_path: Path) -> None:
    """RULES_ENGINE_CONFIG names the file when no path is given."""
    path = tmp_path / "engine.yaml"
    path.write_text("project: from-variable\n")

    config = load_config(environ={"RULES_ENGINE_CONFIG": str(path)})

    assert (config.project, config.source) == ("from-variable", str(path))


@pytest.mark.parametrize("path", SHIPPED, ids=[path.name for path in SHIPPED])
def test_shipped_example_loads(path: Path) -> None:
    """Every example under config/ is a valid configuration."""
    config = load_config(path, environ={})

    assert config.source == str(path)


def test_shipped_examples_are_local_and_embedded() -> None:
    """The examples cover the emulator setup and the embedded one."""
    assert [path.name for path in SHIPPED] == ["embedded.yaml", "local.yaml"]


# Wiring


def test_embedded_configuration_builds_default_handlers() -> None:
    """Without settings, each handler is its embedded default."""
    registry = build_registry(load_config(environ={}))

    cache = registry.get("invalidate_cache")
    notify = registry.get("notify")
    registry.close()

    assert isinstance(cache, InvalidateCacheHandler)
    assert isinstance(cache.backend, MemoryCache)
    assert isinstance(notify, NotifyHandler)
    assert registry.names() == ["change_tier", "invalidate_cache", "notify", "scale"]


def test_plugin_section_becomes_constructor_options(tmp_path: Path) -> None:
    """A plug-in handler gets its section as keyword arguments."""

    class TicketHandler(Handler):
        name = "open_ticket"
        Params = InvalidateCacheHandler.Params

        def __init__(self, queue: str, priority: int) -> None:
            self.options = (queue, priority)

        def execute(
            self, request: ActionRequest, params: Any, context: HandlerContext
        ) -> dict[str, Any]:
            return {}

    path = tmp_path / "engine.yaml"
    path.write_text("handlers:\n  open_ticket: {queue: ops, priority: 2}\n")
    classes: dict[str, type[Handler]] = {
        **builtin_handler_classes(),
        "open_ticket": TicketHandler,
    }

    config = load_config(path, environ={}, handler_names=classes)
    registry = build_registry(config, classes)
    handler = registry.get("open_ticket")

    assert isinstance(handler, TicketHandler)
    assert handler.options == ("ops", 2)


def test_section_of_an_unknown_handler_is_refused(tmp_path: Path) -> None:
    """A section whose handler is gone by the time of the build fails it."""
    path = tmp_path / "engine.yaml"
    path.write_text("handlers:\n  notfy: {retries: 2}\n")
    names = [*builtin_handler_classes(), "notfy"]
    config = load_config(path, environ={}, handler_names=names)

    with pytest.raises(ConfigurationError) as caught:
        build_registry(config, builtin_handler_classes())

    assert str(caught.value) == (
        f"The configuration {str(path)!r} has a section handlers.notfy, but no "
        "handler is registered under that name; did you mean 'notify'?"
    )


@pytest.mark.parametrize(
    ("names", "accepted"),
    [
        (["open_ticket"], True),
        (["notify", "open_ticket"], True),
        (["notify", "scale"], False),
    ],
)
def test_a_plugin_section_loads_only_when_its_handler_is_registered(
    tmp_path: Path, names: list[str], accepted: bool
) -> None:
    """A plug-in's section is refused unless a handler is registered under it."""
    path = tmp_path / "engine.yaml"
    path.write_text("handlers:\n  open_ticket: {queue: ops}\n")

    if accepted is False:
        with pytest.raises(ConfigurationError) as caught:
            load_config(path, environ={}, handler_names=names)
        assert str(caught.value) == (
            f"The configuration file '{path}' is invalid: 1 problem.\n"
            f"  {path}:2:16: handlers.open_ticket is not a registered handler; "
            f"known: {', '.join(names)}."
        )
        return
    config = load_config(path, environ={}, handler_names=names)

    assert config.handlers.plugin_options() == {"open_ticket": {"queue": "ops"}}
