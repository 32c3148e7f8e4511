"""Cache invalidation in Redis: remove one exact key or every key of a pattern.

A target is read in Redis glob syntax (`handlers.cache_keys`): with an
unescaped `*`, `?` or `[` it is a pattern, otherwise one exact key whose
backslash escapes are removed.

Patterns are walked with SCAN, never KEYS: KEYS blocks the server for the
whole keyspace at once, while each SCAN step touches about `COUNT` slots, so
other clients keep being served during a large invalidation. Keys are
removed with UNLINK, which frees their memory in a background thread.
"""

from __future__ import annotations

import redis
import structlog

from engine.errors import HandlerError, TransientHandlerError
from handlers.cache_keys import is_pattern, literal_key
from infra.closing import Closing

__all__ = ["RedisCacheBackend"]

# Keys asked for per SCAN step; each step's keys are unlinked in one call.
_SCAN_COUNT = 1000

log = structlog.get_logger(__name__)


class RedisCacheBackend(Closing):
    """Remove cached entries from one Redis database.

    A target that contains an unescaped `*`, `?` or `[` is a Redis glob
    pattern; any other target is an exact key, so `user:\\*` removes the
    key `user:*` alone.

    Args:
        url: a Redis URL such as `redis://127.0.0.1:6379/0`.
        timeout: seconds allowed to connect and for each command.
    """

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        options = self._client.connection_pool.connection_kwargs
        # Named without the password, since this ends up in logs and errors.
        self.address = (
            f"redis://{options.get('host', '?')}:{options.get('port', '?')}"
            f"/{options.get('db', 0)}"
        )

    def invalidate(self, target: str) -> int:
        """Remove the key `target`, or every key matching it if it is a pattern.

        Returns:
            The number of keys removed.

        Raises:
            TransientHandlerError: Redis is unreachable or timed out; a retry
                may succeed. Keys removed before the failure stay removed.
            HandlerError: Redis refused a command.
        """
        try:
            removed = (
                self._unlink_matching(target)
                if is_pattern(target)
                else int(self._client.unlink(literal_key(target)))
            )
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise TransientHandlerError(
                f"Redis at {self.address} did not answer while invalidating "
                f"{target!r}: {error}"
            ) from error
        except redis.RedisError as error:
            raise HandlerError(
                f"Redis at {self.address} refused to invalidate {target!r}: {error}"
            ) from error

        log.debug("cache invalidated", target=target, removed=removed)
        return removed

    def ping(self) -> None:
        """Check that Redis answers.

        Raises:
            TransientHandlerError: Redis is unreachable or timed out.
        """
        try:
            self._client.ping()
        except redis.RedisError as error:
            raise TransientHandlerError(
                f"Redis at {self.address} did not answer a ping: {error}"
            ) from error

    def close(self) -> None:
        """Close the connections of the pool."""
        self._client.close()

    def _unlink_matching(self, pattern: str) -> int:
        # SCAN may return a key twice; UNLINK counts only keys that still
        # existed, so the total stays exact.
        removed = 0
        cursor = 0
        while True:
            cursor, keys = self._client.scan(cursor, match=pattern, count=_SCAN_COUNT)
            if keys:
                removed += int(self._client.unlink(*keys))
            if cursor == 0:
                return removed
