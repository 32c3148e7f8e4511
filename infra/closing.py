"""Bases for objects that hold a resource and release it on leaving `with`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

__all__ = ["Closing", "Started"]


class Closing(ABC):
    """Use the object in a `with` block; `close` runs when the block ends."""

    @abstractmethod
    def close(self) -> None:
        """Release what the object holds."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Started(Closing):
    """Started on entering a `with` block, closed when it ends."""

    @abstractmethod
    def start(self) -> None:
        """Begin the background work."""

    def __enter__(self) -> Self:
        self.start()
        return self
