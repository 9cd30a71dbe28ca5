"""The Lua the Redis backend runs: sizing keys, and deleting them with the pointer repairs
and expiry guards, each call on at most `LUA_KEYS` keys (a call blocks the server)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from langgraph.checkpoint.redis.key_registry import WRITE_KEYS_ZSET_PREFIX

from .model import Command

#: Keys per Lua call: each call blocks the server while it sizes and frees them.
LUA_KEYS = 100

#: A key's bytes: RedisJSON's own count for JSON documents (checkpoints, writes; half
#: the server time of MEMORY USAGE on big documents, within 1% of it), MEMORY USAGE for
#: the rest (write registries). `kinds` (a string, may be empty) names the keys known to
#: be registries ('R' at their position): they skip the JSON.DEBUG that fails on them.
_SIZE_OF_LUA = """
local function size_of(key, i, kinds)
  if string.byte(kinds, i) ~= 82 then
    local n = redis.pcall('JSON.DEBUG', 'MEMORY', key)
    if type(n) == 'number' then return n end
  end
  return redis.call('MEMORY', 'USAGE', key) or 0
end
"""
#: The kind of each key for `size_of`: 'R' for a write registry (a sorted set), else 'J'.
REGISTRY_HEAD = WRITE_KEYS_ZSET_PREFIX + ":"


def _kinds(keys: Sequence[str]) -> str:
    """`size_of`'s kinds string for `keys`."""
    return "".join("R" if k.startswith(REGISTRY_HEAD) else "J" for k in keys)


#: ARGV[1]: '0' sizes only (dry run), '1' sizes and deletes, '2' deletes unsized (the
#: caller measured the keys already, for `max_bytes`); then optionally the kinds string.
#: Returns -1 and touches nothing unless each of ARGV[2]'s guard pairs (pointer, key)
#: holds: an expired thread goes only while every `checkpoint_latest` pointer still names
#: the checkpoint the decision saw as newest (a run that wrote since keeps its thread).
#: Then sizes KEYS (`size_of`, before anything goes) and returns the sum; with ARGV[1] == '1'
#: also UNLINKs them, then repairs each `checkpoint_latest` pointer given as an ARGV pair
#: (pointer, key of the namespace's newest kept checkpoint or '' when the namespace went):
#: only a pointer whose target no longer exists is touched, re-pointed with KEEPTTL (its
#: TTL stays) or deleted; one a concurrent put moved to a live key is left alone.
SIZE_AND_DELETE_LUA = (
    _SIZE_OF_LUA
    + """
local mode = string.sub(ARGV[1], 1, 1)
local kinds = string.sub(ARGV[1], 2)
local guards = tonumber(ARGV[2])
for i = 3, 2 + 2 * guards, 2 do
  if redis.call('GET', ARGV[i]) ~= ARGV[i + 1] then return -1 end
end
local bytes = 0
if mode ~= '2' then
  for i = 1, #KEYS do
    bytes = bytes + size_of(KEYS[i], i, kinds)
  end
end
if mode ~= '0' then
  for i = 1, #KEYS, 500 do
    redis.call('UNLINK', unpack(KEYS, i, math.min(i + 499, #KEYS)))
  end
  for i = 3 + 2 * guards, #ARGV, 2 do
    local target = redis.call('GET', ARGV[i])
    if target and redis.call('EXISTS', target) == 0 then
      if ARGV[i + 1] == '' then
        redis.call('DEL', ARGV[i])
      else
        redis.call('SET', ARGV[i], ARGV[i + 1], 'KEEPTTL')
      end
    end
  end
end
return bytes
"""
)
SIZE_AND_DELETE_SHA = hashlib.sha1(SIZE_AND_DELETE_LUA.encode()).hexdigest()

#: `size_of` each of KEYS (ARGV[1]: their kinds), as one array (one reply per call).
SIZES_LUA = (
    _SIZE_OF_LUA
    + """
local sizes = {}
for i = 1, #KEYS do
  sizes[i] = size_of(KEYS[i], i, ARGV[1])
end
return sizes
"""
)


def _size_calls(jobs: Sequence[list[str]]) -> tuple[list[Command], list[int]]:
    """Lua calls sizing each job's keys (nothing deleted), at most `LUA_KEYS` per call,
    after the script's load. Returns the calls and each call's job."""
    calls: list[Command] = []
    owner: list[int] = []
    for job, keys in enumerate(jobs):
        for start in range(0, len(keys), LUA_KEYS):
            chunk = keys[start : start + LUA_KEYS]
            calls.append(
                ("EVALSHA", SIZE_AND_DELETE_SHA, len(chunk), *chunk, "0" + _kinds(chunk), "0")
            )
            owner.append(job)
    return [("SCRIPT", "LOAD", SIZE_AND_DELETE_LUA), *calls], owner
