"""The engine's backend configuration: which backend each handler talks to.

A YAML file chooses them; without one, every handler keeps its embedded
default (an in-process cache, alerts in the log, scaling and tier state
kept only in the engine's state)::

    project: my-project            # needed when a handler publishes
    handlers:
      invalidate_cache: {backend: redis, url: "redis://127.0.0.1:6379/0"}
      notify:
        webhook_url: https://hooks.slack.com/services/T000/B000/XXXX
        allowed_hosts: [hooks.slack.com]
        timeout_seconds: 5
        retries: 3
      scale: {publish_topic: scaling-applied}
      change_tier: {publish_topic: tier-changed}

Environment variables override single settings: `RULES_ENGINE__` followed
by the setting's path in capitals, steps joined by `__`, for example
`RULES_ENGINE__HANDLERS__NOTIFY__WEBHOOK_URL`. Their values are read as
YAML, so `[a, b]` is a list and `5` a number. `RULES_ENGINE_CONFIG` names
the file when `--config` is not given.

`build_registry` turns a configuration into the `HandlerRegistry` the
engine uses.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from engine.errors import ConfigurationError
from engine.yaml_source import Marks, YamlSyntaxError, load_with_marks
from handlers.registry import HandlerRegistry

if TYPE_CHECKING:
    from handlers.base import Handler
    from infra.pubsub import PubSubPublisher

__all__ = [
    "CONFIG_FILE_VARIABLE",
    "ENV_PREFIX",
    "ChangeTierConfig",
    "EngineConfig",
    "HandlersConfig",
    "InvalidateCacheConfig",
    "NotifyConfig",
    "ScaleConfig",
    "add_config_argument",
    "build_registry",
    "load_config",
]

CONFIG_FILE_VARIABLE = "RULES_ENGINE_CONFIG"
ENV_PREFIX = "RULES_ENGINE__"

# A topic id as Pub/Sub accepts it, or a full topic path.
_TOPIC_ID = r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}"
_TOPIC = re.compile(rf"^(?:projects/[^/]+/topics/)?{_TOPIC_ID}$")
_REDIS_SCHEMES = ("redis", "rediss", "unix")

ConfigPath = tuple[str | int, ...]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InvalidateCacheConfig(_Section):
    """Where `invalidate_cache` drops entries."""

    backend: Literal["memory", "redis"] = "memory"
    url: str | None = None
    timeout_seconds: float = Field(default=5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None, info: ValidationInfo) -> str | None:
        if url is None:
            return None
        if info.data.get("backend") != "redis":
            raise ValueError("a url applies to the redis backend only")
        scheme = urlsplit(url).scheme
        if scheme not in _REDIS_SCHEMES:
            raise ValueError(
                f"{url!r} is not a Redis URL such as redis://127.0.0.1:6379/0"
            )
        return url

    @model_validator(mode="after")
    def _require_url(self) -> InvalidateCacheConfig:
        if self.backend == "redis" and self.url is None:
            raise ValueError("the redis backend needs a url")
        return self


class NotifyConfig(_Section):
    """Where `notify` delivers alerts besides the log."""

    # Declared before webhook_url, so that its validator can read them.
    allowed_hosts: list[str] = Field(default_factory=list)
    webhook_url: str | None = None
    timeout_seconds: float = Field(default=5.0, gt=0)
    retries: int = Field(default=3, ge=1, le=10)
    backoff_seconds: float = Field(default=0.5, ge=0)

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook(cls, url: str | None, info: ValidationInfo) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http or https URL")
        if "allowed_hosts" not in info.data:
            # allowed_hosts itself is invalid and reported on its own.
            return url
        if parts.hostname not in info.data["allowed_hosts"]:
            raise ValueError(
                f"the host {parts.hostname!r} is not in allowed_hosts; add it "
                "there to let the engine call it"
            )
        return url


class _PublishingConfig(_Section):
    publish_topic: str | None = None

    @field_validator("publish_topic")
    @classmethod
    def _check_topic(cls, topic: str | None) -> str | None:
        if topic is not None and (
            not _TOPIC.match(topic) or topic.lower().startswith("goog")
        ):
            raise ValueError(
                f"{topic!r} is not a Pub/Sub topic id (3 to 255 letters, digits "
                "and -_.~+%, starting with a letter) or a projects/P/topics/T path"
            )
        return topic


class ScaleConfig(_PublishingConfig):
    """Where `scale` announces the capacity it sets (`scaling.applied`)."""


class ChangeTierConfig(_PublishingConfig):
    """Where `change_tier` announces a tier change (`tier.changed`)."""


class HandlersConfig(BaseModel):
    """Settings per handler; other names are options of plug-in handlers."""

    # Plug-in handlers take their section as constructor keywords.
    model_config = ConfigDict(extra="allow", frozen=True)

    invalidate_cache: InvalidateCacheConfig = Field(
        default_factory=InvalidateCacheConfig
    )
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)
    change_tier: ChangeTierConfig = Field(default_factory=ChangeTierConfig)

    def plugin_options(self) -> dict[str, Any]:
        """Return the sections that name no built-in handler."""
        return dict(self.__pydantic_extra__ or {})


class EngineConfig(_Section):
    """The whole configuration file."""

    project: str | None = Field(default=None, min_length=1)
    handlers: HandlersConfig = Field(default_factory=HandlersConfig)

    # Where the settings came from, for error messages.
    _source: str = PrivateAttr(default="the built-in defaults")

    @property
    def source(self) -> str:
        """Return the file the settings came from, for messages."""
        return self._source


# Loading


class _Origins:
    """Say where each setting came from: a file position or a variable."""

    def __init__(self, name: str | None, marks: Marks) -> None:
        self._name = name
        self._marks = marks
        self._variables: dict[ConfigPath, str] = {}

    def add_variable(self, path: ConfigPath, variable: str) -> None:
        self._variables[path] = variable

    def describe(self, path: ConfigPath) -> str:
        for end in range(len(path), 0, -1):
            variable = self._variables.get(path[:end])
            if variable is not None:
                return f"environment variable {variable}"
        # A problem of a whole section may come from a variable inside it.
        inside = [v for p, v in self._variables.items() if p[: len(path)] == path]
        if inside:
            noun = "variable" if len(inside) == 1 else "variables"
            return f"environment {noun} {', '.join(inside)}"
        if self._name is None:
            return "the built-in defaults"
        line, column = self._marks.locate(path)
        return f"{self._name}:{line}:{column}"


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    handler_names: Collection[str] | None = None,
) -> EngineConfig:
    """Read the configuration file, then apply environment overrides.

    Args:
        path: the YAML file; None uses `RULES_ENGINE_CONFIG`, or no file.
        environ: the environment to read overrides from; `os.environ` if None.
        handler_names: the handlers a section may name; if None, the
            built-ins and the installed plug-ins.

    Raises:
        ConfigurationError: the file cannot be read, is not valid YAML, or a
            setting is wrong; the message names the file, line and setting.
    """
    environ = os.environ if environ is None else environ
    if path is None:
        path = environ.get(CONFIG_FILE_VARIABLE) or None

    raw: Any = {}
    marks = Marks()
    name = None if path is None else str(path)
    if name is not None:
        raw, marks = _read_file(name)
    origins = _Origins(name, marks)
    _apply_overrides(raw, environ, origins)

    # Read from the raw settings, so that a misspelt handler is reported
    # with the other problems even when some setting is invalid.
    unknown = _check_handler_names(raw, handler_names)
    try:
        config = EngineConfig.model_validate(raw)
    except ValidationError as error:
        problems = [
            (tuple(item["loc"]), _describe(dict(item))) for item in error.errors()
        ]
        raise _invalid(name, problems + unknown, origins) from None

    problems = _check_cross_fields(config) + unknown
    if problems:
        raise _invalid(name, problems, origins)
    if name is not None:
        config._source = name
    return config


def _read_file(name: str) -> tuple[dict[str, Any], Marks]:
    try:
        text = Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(
            f"The configuration file {name!r} does not exist."
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(
            f"The configuration file {name!r} cannot be read: {error}."
        ) from error
    try:
        raw, marks = load_with_marks(text)
    except YamlSyntaxError as error:
        raise ConfigurationError(
            f"{name}:{error.line}:{error.column}: {error}"
        ) from error
    if raw is None:
        return {}, marks
    if not isinstance(raw, dict):
        raise ConfigurationError(
            f"{name}:1:1: A configuration file must be a mapping with keys such "
            "as 'project' and 'handlers'."
        )
    return raw, marks


def _apply_overrides(
    raw: dict[str, Any], environ: Mapping[str, str], origins: _Origins
) -> None:
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX):
            continue
        steps = variable[len(ENV_PREFIX) :].lower().split("__")
        if not all(steps):
            raise ConfigurationError(
                f"The environment variable {variable} does not name a setting; "
                f"use {ENV_PREFIX}SECTION__SETTING, for example "
                f"{ENV_PREFIX}HANDLERS__NOTIFY__WEBHOOK_URL."
            )
        target = raw
        for depth, step in enumerate(steps[:-1]):
            child = target.get(step)
            if child is None:
                # An empty section in YAML, such as a bare `handlers:`.
                child = target[step] = {}
            if not isinstance(child, dict):
                where = ".".join(steps[: depth + 1])
                raise ConfigurationError(
                    f"The environment variable {variable} sets a field inside "
                    f"{where}, which is not a section."
                )
            target = child
        target[steps[-1]] = _parse_override(environ[variable])
        origins.add_variable(tuple(steps), variable)


def _parse_override(text: str) -> Any:
    # YAML lets one variable carry a number, a boolean or a list; text that
    # is not valid YAML, or is empty, is taken as the plain string it is.
    try:
        value, _ = load_with_marks(text)
    except YamlSyntaxError:
        return text
    return text if value is None else value


def _check_cross_fields(config: EngineConfig) -> list[tuple[ConfigPath, str]]:
    problems: list[tuple[ConfigPath, str]] = []
    handlers = config.handlers
    for name in ("scale", "change_tier"):
        topic = getattr(handlers, name).publish_topic
        if (
            topic is not None
            and not topic.startswith("projects/")
            and not config.project
        ):
            problems.append(
                (
                    ("handlers", name, "publish_topic"),
                    f"handlers.{name}.publish_topic needs 'project' to be set, or "
                    "a full projects/P/topics/T path.",
                )
            )
    for name, options in handlers.plugin_options().items():
        if not isinstance(options, dict):
            problems.append(
                (
                    ("handlers", name),
                    f"handlers.{name} must be a mapping of the handler's options.",
                )
            )
    return problems


def _check_handler_names(
    raw: dict[str, Any], handler_names: Collection[str] | None
) -> list[tuple[ConfigPath, str]]:
    """Refuse sections that name no registered handler, such as a typo.

    Built-in sections are fields of `HandlersConfig`; any other name must
    be a plug-in's, or its settings would be ignored without a word.
    """
    written = raw.get("handlers")
    if not isinstance(written, dict):
        return []
    sections = [str(key) for key in written if key not in HandlersConfig.model_fields]
    if not sections:
        return []
    if handler_names is None:
        from handlers.registry import discover_handler_classes

        handler_names = discover_handler_classes()
    known = sorted(handler_names)
    return [
        (
            ("handlers", name),
            f"handlers.{name} is not a registered handler; {_hint(name, known)}",
        )
        for name in sections
        if name not in handler_names
    ]


def _hint(name: str, known: list[str]) -> str:
    """Suggest the known name closest to a misspelt one, or list them all."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}."


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(step) for step in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_fields(error["loc"][:-1])
        hint = _hint(str(error["loc"][-1]), known)
        return f"{loc} is not a setting; {hint}"
    if kind == "missing":
        return f"{loc} is required."
    if kind in ("model_type", "dict_type"):
        return f"{loc} must be a mapping, not {error['input']!r}."
    message = str(error["msg"])
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
        return f"{loc}: {message[0].upper()}{message[1:]}."
    return f"{loc}: {message}, not {error['input']!r}."


def _known_fields(loc: tuple[str | int, ...]) -> list[str]:
    model: type[BaseModel] = EngineConfig
    for step in loc:
        field = model.model_fields.get(str(step))
        annotation = None if field is None else field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _invalid(
    name: str | None, problems: list[tuple[ConfigPath, str]], origins: _Origins
) -> ConfigurationError:
    where = f"The configuration file {name!r}" if name else "The configuration"
    count = len(problems)
    noun = "problem" if count == 1 else "problems"
    lines = "\n".join(
        f"  {origins.describe(path)}: {message}" for path, message in problems
    )
    return ConfigurationError(f"{where} is invalid: {count} {noun}.\n{lines}")


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Declare `--config FILE` on a command's parser."""
    parser.add_argument(
        "--config",
        help=(
            "YAML file that chooses the handler backends (default: "
            f"${CONFIG_FILE_VARIABLE}, else the embedded backends); "
            f"{ENV_PREFIX}* variables override single settings"
        ),
    )


# Wiring


class _Closeable(Protocol):
    def close(self) -> None: ...


class _ConfiguredRegistry(HandlerRegistry):
    """A registry that also closes the backend clients built for it."""

    def __init__(
        self,
        classes: dict[str, type[Handler]] | None,
        options: dict[str, dict[str, Any]],
        resources: list[_Closeable],
    ) -> None:
        super().__init__(classes, options)
        self._resources = resources

    def close(self) -> None:
        """Close every handler, then the clients they shared."""
        super().close()
        for resource in reversed(self._resources):
            resource.close()
        self._resources.clear()


def build_registry(
    config: EngineConfig, classes: dict[str, type[Handler]] | None = None
) -> HandlerRegistry:
    """Build the handler registry that the configuration describes.

    Backend clients connect on first use, so an unreachable Redis or Pub/Sub
    shows up as a failed action, not here.

    Args:
        config: the loaded configuration.
        classes: handler classes by name; the built-ins and plug-ins if None.

    Raises:
        ConfigurationError: a section names no registered handler.
    """
    registry_classes = classes
    if registry_classes is None:
        from handlers.registry import discover_handler_classes

        registry_classes = discover_handler_classes()
    handlers = config.handlers
    options: dict[str, dict[str, Any]] = {}
    resources: list[_Closeable] = []

    for name, section in handlers.plugin_options().items():
        if name not in registry_classes:
            # `load_config` refuses these already; classes given here may
            # differ from the ones it checked against.
            raise ConfigurationError(
                f"The configuration {config.source!r} has a section "
                f"handlers.{name}, but no handler is registered under that "
                f"name; {_hint(name, sorted(registry_classes))}"
            )
        options[name] = dict(section)

    # The backend modules are imported only when chosen: the Google client
    # libraries take about half a second to import.
    cache = handlers.invalidate_cache
    if cache.backend == "redis" and cache.url is not None:
        from infra.redis_cache import RedisCacheBackend

        backend = RedisCacheBackend(cache.url, timeout=cache.timeout_seconds)
        resources.append(backend)
        options["invalidate_cache"] = {"backend": backend}

    notify = handlers.notify
    if notify.webhook_url is not None:
        options["notify"] = {
            "webhook_url": notify.webhook_url,
            "allowed_hosts": list(notify.allowed_hosts),
            "timeout_seconds": notify.timeout_seconds,
            "retries": notify.retries,
            "backoff_seconds": notify.backoff_seconds,
        }

    topics = {
        name: topic
        for name in ("scale", "change_tier")
        if (topic := getattr(handlers, name).publish_topic) is not None
    }
    if topics:
        from infra.cloudevents import CloudEventPublisher

        # One client for both topics: each client runs its own threads.
        try:
            client = _pubsub_publisher(config)
        except ConfigurationError:
            for resource in resources:
                resource.close()
            raise
        resources.append(client)
        for name, topic in topics.items():
            options[name] = {"publisher": CloudEventPublisher(client, topic)}

    return _ConfiguredRegistry(registry_classes, options, resources)


def _pubsub_publisher(config: EngineConfig) -> PubSubPublisher:
    from google.auth.exceptions import DefaultCredentialsError

    from infra.pubsub import PubSubPublisher

    try:
        return PubSubPublisher(config.project or "")
    except DefaultCredentialsError as error:
        raise ConfigurationError(
            f"The configuration {config.source!r} publishes to Pub/Sub, but no "
            "Google credentials were found; set PUBSUB_EMULATOR_HOST to use the "
            "emulator, or run with a service account."
        ) from error
