"""Redis storage (`RedisSaver`, `AsyncRedisSaver`): prune, locks, schema checks."""

from .backend import AsyncRedisBackend, RedisBackend, RedisUnavailableError

__all__ = ["AsyncRedisBackend", "RedisBackend", "RedisUnavailableError"]
