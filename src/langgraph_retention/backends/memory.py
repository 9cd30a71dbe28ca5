"""`InMemorySaver`: the index is read from its dicts; checkpoints, their writes and the
blobs only they referenced are removed from them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.types import INTERRUPT, TASKS

from langgraph_retention.errors import RetentionError
from langgraph_retention.policy import (
    CheckpointEntry,
    RetentionPolicy,
    checkpoint_time,
    delta_needs,
)
from langgraph_retention.report import ThreadResult, ThreadStats

from .base import Backend, Expire, Span, Stage, decide

__all__ = ["MemoryBackend"]

_EMPTY_BLOB = "empty"


class MemoryBackend(Backend):
    """Prunes an `InMemorySaver` in place (its own async methods are sync underneath)."""

    name = "memory"
    saver: InMemorySaver

    def _index(
        self, thread_id: str, tag: str | None = None
    ) -> tuple[list[CheckpointEntry], dict[tuple[str, str], Any]]:
        """The thread's index (with sizes, the `tag` metadata key, interrupts), plus each
        checkpoint's decoded body (no channel values)."""
        saver = self.saver
        # One snapshot of the thread: a run may add checkpoints while we read.
        snapshot = {
            ns: list(checkpoints.items())
            for ns, checkpoints in list(saver.storage.get(thread_id, {}).items())
        }
        bodies: dict[tuple[str, str], Any] = {}
        metas: dict[tuple[str, str], Any] = {}
        delta_names: dict[str, set[str]] = {}
        for ns, rows in snapshot.items():
            for cid, (cp_typed, meta_typed, _parent) in rows:
                meta = saver.serde.loads_typed(meta_typed)
                metas[(ns, cid)] = meta
                bodies[(ns, cid)] = saver.serde.loads_typed(cp_typed)
                counters = meta.get("counters_since_delta_snapshot") or {}
                delta_names.setdefault(ns, set()).update(counters)
        sends_at: set[tuple[str, str]] = set()
        interrupted: set[tuple[str, str]] = set()
        write_bytes: dict[tuple[str, str], int] = {}
        for (tid, ns, cid), writes in list(saver.writes.items()):
            if tid != thread_id:
                continue
            channels = {w[1] for w in writes.values()}
            if TASKS in channels:
                sends_at.add((ns, cid))
            if INTERRUPT in channels:
                interrupted.add((ns, cid))
            write_bytes[(ns, cid)] = sum(len(w[2][1]) for w in writes.values())
        blob_bytes = self._blob_bytes(thread_id, snapshot, bodies)
        entries: list[CheckpointEntry] = []
        for ns, rows in snapshot.items():
            names = delta_names.get(ns, set())
            for cid, (cp_typed, meta_typed, parent) in rows:
                body = bodies[(ns, cid)]
                versions: dict[str, Any] = body.get("channel_versions", {})
                stored = [
                    ch
                    for ch, ver in versions.items()
                    if ch in names
                    and saver.blobs.get((thread_id, ns, ch, ver), (_EMPTY_BLOB, b""))[0]
                    != _EMPTY_BLOB
                ]
                entries.append(
                    CheckpointEntry(
                        checkpoint_ns=ns,
                        checkpoint_id=cid,
                        parent_id=parent,
                        parents=metas[(ns, cid)].get("parents") or {},
                        delta_needs=delta_needs(names, versions, stored) if names else frozenset(),
                        sends_parent=body.get("v", 0) < 4 and (ns, parent) in sends_at,
                        size=len(cp_typed[1])
                        + len(meta_typed[1])
                        + write_bytes.get((ns, cid), 0)
                        + blob_bytes.get((ns, cid), 0),
                        tags=frozenset({tag}) if tag and metas[(ns, cid)].get(tag) else frozenset(),
                        interrupted=(ns, cid) in interrupted,
                    )
                )
        return entries, bodies

    def _blob_bytes(
        self,
        thread_id: str,
        snapshot: Mapping[str, list[tuple[str, Any]]],
        bodies: Mapping[tuple[str, str], Any],
    ) -> dict[tuple[str, str], int]:
        """Each channel value's bytes, counted once, on the newest checkpoint that loads
        it: the checkpoint whose deletion, with its elders', frees the value."""
        newest_user: dict[tuple[str, str, Any], str] = {}
        for ns, rows in snapshot.items():
            for cid, _row in rows:
                for channel, version in bodies[(ns, cid)].get("channel_versions", {}).items():
                    key = (ns, channel, version)
                    if cid > newest_user.get(key, ""):
                        newest_user[key] = cid
        sizes: dict[tuple[str, str], int] = {}
        for (ns, channel, version), cid in newest_user.items():
            blob = self.saver.blobs.get((thread_id, ns, channel, version))
            if blob is not None:
                sizes[(ns, cid)] = sizes.get((ns, cid), 0) + len(blob[1])
        return sizes

    def _prune_one(
        self,
        thread_id: str,
        policy: RetentionPolicy,
        dry_run: bool,
        now: datetime,
        explain: bool,
        expire: Expire | None,
    ) -> ThreadResult:
        saver = self.saver
        entries, bodies = self._index(thread_id, policy.keep_tagged)
        plan, result = decide(thread_id, entries, policy, now=now, explain=explain, expire=expire)
        namespaces = saver.storage.get(thread_id, {})
        for ns, doomed in plan.delete.items():
            checkpoints = namespaces.get(ns, {})
            doomed_set = set(doomed)
            freed: set[tuple[str, Any]] = set()
            for cid in doomed:
                row = checkpoints.get(cid)
                if row is None:
                    continue
                result.deleted_checkpoints += 1
                result.bytes_freed += len(row[0][1]) + len(row[1][1])
                freed.update(bodies[(ns, cid)].get("channel_versions", {}).items())
                writes = saver.writes.get((thread_id, ns, cid), {})
                result.deleted_writes += len(writes)
                result.bytes_freed += sum(len(w[2][1]) for w in writes.values())
            still_used = {
                (ch, ver)
                for cid, (cp_typed, _m, _p) in list(checkpoints.items())
                if cid not in doomed_set
                for ch, ver in (
                    bodies[(ns, cid)] if (ns, cid) in bodies else saver.serde.loads_typed(cp_typed)
                )
                .get("channel_versions", {})
                .items()
            }
            garbage = [
                (thread_id, ns, ch, ver)
                for ch, ver in freed - still_used
                if (thread_id, ns, ch, ver) in saver.blobs
            ]
            result.deleted_blobs += len(garbage)
            result.bytes_freed += sum(len(saver.blobs[k][1]) for k in garbage)
            if dry_run:
                continue
            for cid in doomed:
                checkpoints.pop(cid, None)
                saver.writes.pop((thread_id, ns, cid), None)
            for key in garbage:
                saver.blobs.pop(key, None)
            # An emptied namespace dict stays: a concurrent put may hold it already.
        return result

    def prune_batch(
        self,
        thread_ids: Sequence[str],
        policy: RetentionPolicy,
        *,
        dry_run: bool,
        now: datetime,
        explain: bool = False,
        expire: Expire | None = None,
        stage: Stage | None = None,
    ) -> list[ThreadResult]:
        results = []
        for tid in thread_ids:
            try:
                results.append(self._prune_one(tid, policy, dry_run, now, explain, expire))
            except RetentionError as exc:
                results.append(ThreadResult(tid, error=str(exc)))
        return results

    def thread_spans(self, thread_ids: Sequence[str]) -> dict[str, Span]:
        spans: dict[str, Span] = {}
        for tid in thread_ids:
            ids = [
                cid
                for checkpoints in list(self.saver.storage.get(tid, {}).values())
                for cid in list(checkpoints)
            ]
            if ids:
                spans[tid] = (min(ids), max(ids))
        return spans

    def iter_thread_ids(self) -> Iterator[str]:
        yield from [tid for tid, nss in list(self.saver.storage.items()) if any(nss.values())]

    def thread_stats(self, thread_ids: Sequence[str]) -> list[tuple[str, ThreadStats]]:
        saver = self.saver
        wanted = set(thread_ids)
        writes_by_thread: dict[str, list[int]] = {}
        for (tid, _ns, _cid), writes in list(saver.writes.items()):
            if tid in wanted:
                acc = writes_by_thread.setdefault(tid, [0, 0])
                acc[0] += len(writes)
                acc[1] += sum(len(w[2][1]) for w in writes.values())
        blob_bytes: dict[str, int] = {}
        for key, (_type, data) in list(saver.blobs.items()):
            if key[0] in wanted:
                blob_bytes[key[0]] = blob_bytes.get(key[0], 0) + len(data)
        out: list[tuple[str, ThreadStats]] = []
        for tid in thread_ids:
            namespaces = saver.storage.get(tid)
            if not namespaces or not any(namespaces.values()):
                continue
            ts = ThreadStats()
            for checkpoints in namespaces.values():
                if not checkpoints:
                    continue
                ts.namespaces += 1
                for cid, (cp_typed, meta_typed, _p) in list(checkpoints.items()):
                    ts.checkpoints += 1
                    ts.bytes += len(cp_typed[1]) + len(meta_typed[1])
                    if ts.newest_checkpoint_id is None or cid > ts.newest_checkpoint_id:
                        ts.newest_checkpoint_id = cid
            ts.writes, write_bytes = writes_by_thread.get(tid, [0, 0])
            ts.bytes += write_bytes + blob_bytes.get(tid, 0)
            if ts.newest_checkpoint_id:
                ts.newest = checkpoint_time(ts.newest_checkpoint_id)
            out.append((tid, ts))
        return out

    # InMemorySaver's async methods run its sync code on the loop; so do these.
    async def aprune_batch(
        self,
        thread_ids: Sequence[str],
        policy: RetentionPolicy,
        *,
        dry_run: bool,
        now: datetime,
        explain: bool = False,
        expire: Expire | None = None,
        stage: Stage | None = None,
    ) -> list[ThreadResult]:
        return self.prune_batch(
            thread_ids, policy, dry_run=dry_run, now=now, explain=explain, expire=expire
        )

    async def athread_spans(self, thread_ids: Sequence[str]) -> dict[str, Span]:
        return self.thread_spans(thread_ids)

    async def _aiter(self) -> AsyncIterator[str]:
        for tid in self.iter_thread_ids():
            yield tid

    def aiter_thread_ids(self) -> AsyncIterator[str]:
        return self._aiter()

    async def athread_stats(self, thread_ids: Sequence[str]) -> list[tuple[str, ThreadStats]]:
        return self.thread_stats(thread_ids)
