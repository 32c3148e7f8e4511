"""`invalidate_cache`: drop cached entries by exact key or glob pattern.

The embedded backend is an in-process LRU cache with a time to live, which
the platform's own code may use through `MemoryCache`; a Redis backend is
chosen by configuration (`infra.redis_cache.RedisCacheBackend`). Both read
a target in Redis glob syntax (`handlers.cache_keys`), and a value that a
template inserts into the target is escaped to match only itself.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field

from handlers.base import ActionRequest, Handler, HandlerContext
from handlers.cache_keys import compile_pattern, escape_glob, is_pattern, literal_key

__all__ = ["CacheBackend", "InvalidateCacheHandler", "MemoryCache"]


class CacheBackend(Protocol):
    """A cache that can drop entries."""

    def invalidate(self, target: str) -> int:
        """Drop the key or every key matching the pattern; return how many."""


class MemoryCache:
    """An LRU cache with a time to live, bounded in entries."""

    def __init__(
        self,
        max_entries: int = 10_000,
        ttl_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: str, value: Any) -> None:
        """Store a value, evicting the least recently used entry when full."""
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def get(self, key: str) -> Any:
        """Return a live value, or None when absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def invalidate(self, target: str) -> int:
        """Drop the key or every key matching the glob pattern."""
        if not is_pattern(target):
            return 1 if self._entries.pop(literal_key(target), None) is not None else 0
        pattern = compile_pattern(target)
        doomed = [key for key in self._entries if pattern.fullmatch(key)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)


class InvalidateCacheParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(
        min_length=1,
        description=(
            "A key, or a glob such as stats:*; values inserted by a template "
            "match only themselves."
        ),
    )


class InvalidateCacheHandler(Handler):
    """Drop cached entries; bursts for one target are coalesced."""

    name: ClassVar[str] = "invalidate_cache"
    Params = InvalidateCacheParams
    default_coalesce: ClassVar[float | None] = 1.0
    template_escapes: ClassVar[Mapping[str, Callable[[str], str]]] = {
        "target": escape_glob
    }

    def __init__(self, backend: CacheBackend | None = None) -> None:
        self.backend: CacheBackend = backend if backend is not None else MemoryCache()

    def execute(
        self, request: ActionRequest, params: Any, context: HandlerContext
    ) -> dict[str, Any]:
        """Invalidate the target and report how many entries went."""
        removed = self.backend.invalidate(params.target)
        return {"removed": removed}
