"""What the Redis backend reads, as plain data: where a saver keeps things, checkpoints and
threads as planning needs them, RESP replies (RESP2 lists or RESP3 maps, bytes or str)
turned into rows, and checkpoint and write keys split where that is unambiguous."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from langgraph.checkpoint.redis.key_registry import WRITE_KEYS_ZSET_PREFIX
from langgraph.checkpoint.redis.util import from_storage_safe_id, from_storage_safe_str

from langgraph_retention.errors import RetentionError

#: LangGraph checkpoint ids: canonical UUIDs (never a ':').
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

R = TypeVar("R")
Command = tuple[Any, ...]
Program = Generator[list[Command], list[Any], R]
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where one saver keeps things: its index names and key prefixes."""

    checkpoint_index: str
    write_index: str
    checkpoint_prefix: str
    write_prefix: str
    latest_prefix: str

    def latest_key(self, stored_tid: str, stored_ns: str) -> str:
        """The (thread, ns) `checkpoint_latest` pointer, from stored (sentinel) values."""
        return f"{self.latest_prefix}:{stored_tid}:{stored_ns}"

    def registry_key(self, checkpoint_key: str) -> str:
        """The checkpoint's write-key registry: same `{thread}:{ns}:{id}` tail, own prefix."""
        return WRITE_KEYS_ZSET_PREFIX + checkpoint_key[len(self.checkpoint_prefix) :]


@dataclass(slots=True)
class _Doc:
    """One checkpoint as the planner needs it (ns and ids un-sentineled)."""

    key: str
    ns: str
    cid: str
    stored_ns: str
    parent: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int | None = None


@dataclass(slots=True)
class _Thread:
    """One thread's checkpoints; for field-by-field threads also their writes and sends."""

    stored_id: str
    docs: list[_Doc] = field(default_factory=list)
    detailed: bool = False
    #: False when some write key could not be tied to a checkpoint from its key alone;
    #: the doomed checkpoints' writes are then looked up by checkpoint id instead.
    writes_known: bool = False
    writes: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    sends_at: set[tuple[str, str]] = field(default_factory=set)
    interrupted_at: set[tuple[str, str]] = field(default_factory=set)


# -- reply parsing (RESP2 lists and RESP3 maps, bytes or str) ---------------------------


def _decode(value: Any) -> Any:
    """Bytes (clients without decode_responses) to str, through lists."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _get(mapping: dict[Any, Any], name: str) -> Any:
    """A RESP3 map entry, whether the client decodes keys or not."""
    return mapping.get(name, mapping.get(name.encode()))


def _parse_page(reply: Any) -> tuple[list[Row], int]:
    """Rows and the next cursor id (0: done) of an FT.AGGREGATE WITHCURSOR reply."""
    payload, cursor = reply
    if isinstance(payload, dict):  # RESP3
        warnings = _get(payload, "warning") or []
        if warnings:
            raise RetentionError(
                "RediSearch returned partial results "
                f"({'; '.join(str(_decode(w)) for w in warnings)}); nothing was deleted"
            )
        rows = [
            {_decode(k): _decode(v) for k, v in (_get(r, "extra_attributes") or {}).items()}
            for r in _get(payload, "results") or []
        ]
    else:  # RESP2: [count, [field, value, ...], ...]
        rows = [
            {_decode(row[i]): _decode(row[i + 1]) for i in range(0, len(row) - 1, 2)}
            for row in payload[1:]
        ]
    return rows, int(cursor)


def _parse_search(reply: Any) -> tuple[list[str], int]:
    """The keys of an `FT.SEARCH ... NOCONTENT` reply and how many documents matched."""
    if isinstance(reply, dict):  # RESP3
        warnings = _get(reply, "warning") or []
        if warnings:
            raise RetentionError(
                "RediSearch returned partial results "
                f"({'; '.join(str(_decode(w)) for w in warnings)}); nothing was deleted"
            )
        results = _get(reply, "results") or []
        return [_decode(_get(r, "id")) for r in results], int(_get(reply, "total_results"))
    return [_decode(k) for k in reply[1:]], int(reply[0])


def _owners(prefix: str, heads: Mapping[str, str], key: str, nested: bool = True) -> list[str]:
    """The threads whose keys may begin like `key`: each `{prefix}:{stored id}:` that starts
    it, for the stored ids in `heads` (stored id -> thread id). Ids may hold ':', so one
    key can fit two (`a` and `a:b`): callers then read those threads field by field.
    `nested=False` when no id in `heads` holds a ':' (only the first piece can fit)."""
    start = len(prefix) + 1
    if not key.startswith(prefix) or key[start - 1 : start] != ":":
        return []
    owners = []
    end = key.find(":", start)
    while end != -1:
        tid = heads.get(key[start:end])
        if tid is not None:
            owners.append(tid)
        end = key.find(":", end + 1) if nested else -1
    return owners


def _objkeys(reply: Any) -> set[str]:
    """The keys of a `JSON.OBJKEYS key $.path` reply (empty when the path is missing)."""
    if not reply or reply[0] is None:
        return set()
    return {_decode(k) for k in reply[0]}


def _keys(row: Row) -> list[str]:
    """The keys a grouped row collected with TOLIST."""
    keys = row.get("keys") or []
    return [keys] if isinstance(keys, str) else list(keys)


def _docs_from_keys(layout: _Layout, stored_tid: str, keys: Sequence[str]) -> list[_Doc] | None:
    """Checkpoints from their keys, split after the known `{prefix}:{thread}:` only.

    The tail is `{ns}:{id}`; LangGraph ids are UUIDs (no ':'), so the split is exact.
    None when a key does not fit, or a subgraph call namespace needs its metadata.
    """
    head = f"{layout.checkpoint_prefix}:{stored_tid}:"
    docs = []
    for key in keys:
        if not key.startswith(head):
            return None
        stored_ns, sep, stored_cid = key[len(head) :].rpartition(":")
        ns = from_storage_safe_str(stored_ns)
        if not sep or not _UUID.fullmatch(stored_cid) or ":" in ns:
            return None
        docs.append(_Doc(key=key, ns=ns, cid=from_storage_safe_id(stored_cid), stored_ns=stored_ns))
    return docs


def _attach_writes(layout: _Layout, thread: _Thread, keys: Sequence[str]) -> bool:
    """File write keys under their checkpoints, split after `{prefix}:{thread}:` only.

    The tail is `{ns}:{id}:{task}:{idx}`. A key whose `{ns}:{id}` is not one of the
    thread's checkpoints (a task id with ':', a write newer than the read, an orphan)
    makes the whole thread fall back to a lookup by checkpoint id: False.
    """
    head = f"{layout.write_prefix}:{thread.stored_id}:"
    known = {(d.stored_ns, d.cid) for d in thread.docs}
    for key in keys:
        if not key.startswith(head):
            return False
        parts = key[len(head) :].rsplit(":", 2)
        if len(parts) != 3:
            return False
        stored_ns, _sep, stored_cid = parts[0].rpartition(":")
        cid = from_storage_safe_id(stored_cid)
        if (stored_ns, cid) not in known:
            return False
        thread.writes[(from_storage_safe_str(stored_ns), cid)].append(key)
    return True


def _version(raw: Any) -> int | None:
    """An integer field as read (None when absent or not a number)."""
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def _detailed_doc(row: Row) -> _Doc:
    """A checkpoint from its field-by-field row (metadata parsed: parents, delta counters)."""
    meta_raw = row.get("metadata")
    meta = json.loads(meta_raw) if isinstance(meta_raw, str) and meta_raw else {}
    stored_ns = row.get("checkpoint_ns") or ""
    return _Doc(
        key=row["__key"],
        ns=from_storage_safe_str(stored_ns),
        cid=from_storage_safe_id(row["checkpoint_id"]),
        stored_ns=stored_ns,
        parent=from_storage_safe_id(row.get("parent_checkpoint_id") or "") or None,
        metadata=meta if isinstance(meta, dict) else {},
        version=_version(row.get("v")),
    )
