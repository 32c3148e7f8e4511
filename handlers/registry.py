"""Find action handlers by name: built-ins and the `rules_engine.handlers` group.

Third-party packages add handlers with an entry point::

    [project.entry-points."rules_engine.handlers"]
    open_ticket = "my_package.tickets:OpenTicketHandler"
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import structlog

from engine.errors import HandlerNotFound
from handlers.base import Handler

__all__ = ["ENTRY_POINT_GROUP", "HandlerRegistry", "builtin_handler_classes"]

ENTRY_POINT_GROUP = "rules_engine.handlers"
log = structlog.get_logger(__name__)


def builtin_handler_classes() -> dict[str, type[Handler]]:
    """Return the handlers that ship with the engine, by name."""
    from handlers.cache import InvalidateCacheHandler
    from handlers.notify import NotifyHandler
    from handlers.scale import ScaleHandler
    from handlers.tier import ChangeTierHandler

    classes: list[type[Handler]] = [
        InvalidateCacheHandler,
        ScaleHandler,
        ChangeTierHandler,
        NotifyHandler,
    ]
    return {cls.name: cls for cls in classes}


def discover_handler_classes() -> dict[str, type[Handler]]:
    """Return built-in handlers plus those other packages register."""
    classes = builtin_handler_classes()
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in classes:
            continue
        try:
            loaded = entry.load()
        except Exception as error:  # a broken plug-in must not stop the engine
            log.error(
                "handler plug-in failed to load", handler=entry.name, error=str(error)
            )
            continue
        if isinstance(loaded, type) and issubclass(loaded, Handler):
            classes[entry.name] = loaded
        else:
            log.error("handler plug-in is not a Handler", handler=entry.name)
    return classes


class HandlerRegistry:
    """Handler classes by name, and their instances once configured."""

    def __init__(
        self,
        classes: dict[str, type[Handler]] | None = None,
        options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self._classes = classes if classes is not None else discover_handler_classes()
        self._options = options or {}
        self._instances: dict[str, Handler] = {}

    def names(self) -> list[str]:
        """Return the registered handler names, sorted."""
        return sorted(self._classes)

    def handler_class(self, name: str) -> type[Handler]:
        """Return the class registered under `name`.

        Raises:
            HandlerNotFound: no handler has that name.
        """
        cls = self._classes.get(name)
        if cls is None:
            known = ", ".join(self.names())
            raise HandlerNotFound(
                f"No handler is registered as {name!r}; known: {known}."
            )
        return cls

    def register(self, cls: type[Handler], instance: Handler | None = None) -> None:
        """Add or replace a handler class, optionally with a ready instance."""
        self._classes[cls.name] = cls
        if instance is not None:
            self._instances[cls.name] = instance

    def get(self, name: str) -> Handler:
        """Return the configured instance of a handler, creating it once."""
        instance = self._instances.get(name)
        if instance is None:
            cls = self.handler_class(name)
            instance = cls(**self._options.get(name, {}))
            self._instances[name] = instance
        return instance

    def close(self) -> None:
        """Close every handler instance."""
        for instance in self._instances.values():
            instance.close()
        self._instances.clear()
