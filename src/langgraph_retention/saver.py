"""`RetainingSaver`: a checkpointer that keeps each thread pruned as the graph writes.

It wraps the user's own checkpointer and is itself a `BaseCheckpointSaver`, so
`graph.compile(checkpointer=RetainingSaver(saver, policy))` works for sync and async
savers alike. Every checkpointer method goes to the wrapped saver unchanged; what the
wrapper adds is a per-thread count of root-namespace `put`s:

- ``mode="inline"`` (the seed's `AutoCleanupCheckpointer`): every `every` puts to a
  thread, that thread is pruned right there, in the caller, after the put. Simple, no
  background machinery, but the reply that triggers it pays for the prune. A failing
  prune is logged and counted, never raised into the graph run.
- ``mode="background"`` (the seed's `SmartCheckpointer`): at `threshold` puts the thread
  is handed to a `BackgroundPruner` (non-blocking); the reply pays only for the count.

The counts live in an LRU-bounded map (`max_tracked_threads`), so memory stays flat with
millions of threads: the least recently written threads lose their partial counts first
(a periodic `sweep` catches threads that go quiet before reaching the threshold).

The wrapper also implements `prune`/`aprune` (`BaseCheckpointSaver`'s contract:
"keep_latest" and "delete") on this project's engine, and claims no other capability the
wrapped saver lacks: capability checks look at which methods a saver's *class*
overrides, so each wrapped saver class gets its own `RetainingSaver` subclass whose
missing methods are `BaseCheckpointSaver`'s (they raise `NotImplementedError`).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from langgraph_retention._validate import check_int
from langgraph_retention.backends import resolve_backend
from langgraph_retention.engine import aprune_thread, asweep, prune_thread, sweep
from langgraph_retention.errors import RetentionError
from langgraph_retention.policy import RetentionPolicy
from langgraph_retention.report import PruneReport
from langgraph_retention.worker import BackgroundPruner

__all__ = ["PruneError", "RetainingCounters", "RetainingSaver"]

logger = logging.getLogger("langgraph_retention.saver")

Mode = Literal["inline", "background"]

#: Default `every` for inline mode (the seed's `cleanup_frequency`).
DEFAULT_EVERY = 20
#: Default `threshold` for background mode (the seed's `SmartCheckpointer`).
DEFAULT_THRESHOLD = 30
#: Default bound of the put counters: threads whose partial count is remembered.
DEFAULT_MAX_TRACKED_THREADS = 100_000

# Checkpointer methods that stand for a capability (sync and async twin). The wrapper
# forwards each one only when the wrapped saver's class implements it.
_CAPABILITY_METHODS: tuple[str, ...] = (
    "get_tuple",
    "aget_tuple",
    "list",
    "alist",
    "put",
    "aput",
    "put_writes",
    "aput_writes",
    "delete_thread",
    "adelete_thread",
    "delete_for_runs",
    "adelete_for_runs",
    "copy_thread",
    "acopy_thread",
)

_PRUNE_STRATEGIES = ("keep_latest", "delete")


class PruneError(RetentionError):
    """`prune`/`aprune` could not prune every thread; `report.errors` says which and why.

    Threads not named in `report.errors` were pruned.
    """

    def __init__(self, report: PruneReport) -> None:
        self.report = report
        details = "; ".join(f"{tid!r}: {msg}" for tid, msg in list(report.errors.items())[:5])
        more = f" (and {len(report.errors) - 5} more)" if len(report.errors) > 5 else ""
        super().__init__(f"prune failed for {len(report.errors)} thread(s): {details}{more}")


@dataclass(frozen=True, slots=True)
class RetainingCounters:
    """A snapshot of a `RetainingSaver`'s work; totals since it was created."""

    #: Checkpoints written through the wrapper (every namespace).
    puts: int = 0
    #: Threads whose partial put count is remembered now.
    tracked_threads: int = 0
    #: Partial counts forgotten to honour `max_tracked_threads`.
    evicted: int = 0
    #: Times a thread reached `every` (inline) or `threshold` (background).
    triggered: int = 0
    #: Inline prunes that succeeded.
    pruned: int = 0
    #: Inline prunes that failed (logged with the thread id; the run went on).
    failed: int = 0
    #: Checkpoints deleted by inline prunes.
    deleted_checkpoints: int = 0
    #: Threads handed to the background pruner (accepted or already waiting).
    handed_off: int = 0
    #: Hand-offs the background pruner dropped (its queue was full or it was closed).
    dropped: int = 0


class _PutCounter:
    """Per-thread put counts in an LRU-bounded map (thread-safe).

    `hit` is O(1): one dict lookup and a move to the recent end under a lock, which is
    all the hot path pays. At `maxsize` threads the least recently written is forgotten.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.counts: OrderedDict[str, int] = OrderedDict()
        self.lock = threading.Lock()
        self.puts = 0
        self.triggered = 0
        self.evicted = 0

    def hit(self, thread_id: str | None, every: int) -> bool:
        """Count one put (to `thread_id`, or an uncounted namespace when None); True, and
        the thread's count restarts, when it is the thread's `every`-th."""
        with self.lock:
            self.puts += 1
            if thread_id is None:
                return False
            counts = self.counts
            n = counts.get(thread_id, 0) + 1
            if n >= every:
                counts.pop(thread_id, None)
                self.triggered += 1
                return True
            counts[thread_id] = n
            counts.move_to_end(thread_id)
            if len(counts) > self.maxsize:
                counts.popitem(last=False)
                self.evicted += 1
            return False


def _overrides(saver_type: type, name: str) -> bool:
    return getattr(saver_type, name, None) is not getattr(BaseCheckpointSaver, name)


_specialized: dict[tuple[type, type], type] = {}
_specialized_lock = threading.Lock()


def _specialize(cls: type, saver_type: type) -> type:
    """The `cls` subclass for wrapping `saver_type`: capability methods the saver class
    lacks are `BaseCheckpointSaver`'s own, so capability checks see them as missing."""
    key = (cls, saver_type)
    with _specialized_lock:
        sub = _specialized.get(key)
        if sub is None:
            namespace: dict[str, Any] = {
                name: getattr(BaseCheckpointSaver, name)
                for name in _CAPABILITY_METHODS
                if not _overrides(saver_type, name)
            }
            namespace["_retention_saver_type"] = saver_type
            namespace["__module__"] = cls.__module__
            namespace["__qualname__"] = f"{cls.__qualname__}[{saver_type.__qualname__}]"
            namespace["__doc__"] = cls.__doc__
            sub = type(f"{cls.__name__}[{saver_type.__name__}]", (cls,), namespace)
            _specialized[key] = sub
        return sub


class RetainingSaver(BaseCheckpointSaver[Any]):
    """Wrap `saver` so each thread is pruned to `policy` as the graph writes to it.

    Args:
        saver: the checkpointer to wrap (`InMemorySaver`, `SqliteSaver`,
            `AsyncSqliteSaver`, `PostgresSaver`, `AsyncPostgresSaver`, `RedisSaver`,
            `AsyncRedisSaver`).
        policy: what to keep of each thread.
        mode: "inline" (prune in the caller every `every` puts) or "background" (hand the
            thread to a `BackgroundPruner` at `threshold` puts).
        every: inline mode: root-namespace puts to a thread between two prunes of it.
        threshold: background mode: root-namespace puts to a thread before a hand-off.
        pruner: background mode: the `BackgroundPruner` to hand threads to (it must
            prune this same saver with this same policy). Default: one owned by the
            wrapper, closed by its `close`/`aclose`/context manager.
        max_tracked_threads: bound of the per-thread put counters.

    Use it as a context manager (or call `close()` / `await aclose()` at shutdown) so an
    owned background pruner drains its queue; entering and exiting also enters and exits
    the wrapped saver when it is a context manager itself.
    """

    _retention_saver_type: type | None = None

    def __new__(cls, saver: Any = None, *args: Any, **kwargs: Any) -> Self:
        target: type = cls
        if cls._retention_saver_type is None and isinstance(saver, BaseCheckpointSaver):
            target = _specialize(cls, type(saver))
        return cast(Self, object.__new__(target))

    def __init__(
        self,
        saver: BaseCheckpointSaver[Any],
        policy: RetentionPolicy,
        mode: Mode = "inline",
        *,
        every: int | None = None,
        threshold: int | None = None,
        pruner: BackgroundPruner | None = None,
        max_tracked_threads: int = DEFAULT_MAX_TRACKED_THREADS,
    ) -> None:
        # BaseCheckpointSaver.__init__ only sets `serde`, which here is the wrapped
        # saver's (see the property), so it is not called.
        if not isinstance(saver, BaseCheckpointSaver):
            raise TypeError(
                f"saver must be a LangGraph checkpointer (BaseCheckpointSaver), "
                f"got {type(saver).__name__}"
            )
        if isinstance(saver, RetainingSaver):
            raise TypeError("saver is already a RetainingSaver; wrap the underlying saver once")
        if not isinstance(policy, RetentionPolicy):
            raise TypeError(
                "policy must be a RetentionPolicy, e.g. RetentionPolicy(keep_last=10); "
                f"got {type(policy).__name__}"
            )
        if mode not in ("inline", "background"):
            raise ValueError(f"mode must be 'inline' or 'background', got {mode!r}")
        if mode == "inline":
            if threshold is not None:
                raise ValueError("threshold= is for mode='background'; inline mode uses every=")
            if pruner is not None:
                raise ValueError("pruner= is for mode='background'")
            trigger = check_int("every", DEFAULT_EVERY if every is None else every, 1)
        else:
            if every is not None:
                raise ValueError("every= is for mode='inline'; background mode uses threshold=")
            trigger = check_int(
                "threshold", DEFAULT_THRESHOLD if threshold is None else threshold, 1
            )
        resolve_backend(saver)  # UnsupportedSaverError (a TypeError) names what works
        self._saver = saver
        self.policy = policy
        self.mode: Mode = mode
        #: Puts to a thread between two prunes (inline) or hand-offs (background).
        self.trigger = trigger
        self._counter = _PutCounter(check_int("max_tracked_threads", max_tracked_threads, 1))
        self._stats_lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(
            ("pruned", "failed", "deleted_checkpoints", "handed_off", "dropped"), 0
        )
        self._owns_pruner = False
        self.pruner: BackgroundPruner | None = None
        if mode == "background":
            if pruner is None:
                pruner = BackgroundPruner(saver, policy)
                self._owns_pruner = True
            elif not isinstance(pruner, BackgroundPruner):
                raise TypeError(f"pruner must be a BackgroundPruner, got {type(pruner).__name__}")
            else:
                target = getattr(pruner.saver, "retention_wrapped_saver", pruner.saver)
                if target is not saver:
                    raise ValueError("pruner prunes a different saver than the one wrapped")
                if pruner.policy != policy:
                    raise ValueError(
                        f"pruner's policy {pruner.policy} differs from this saver's {policy}"
                    )
            self.pruner = pruner

    # -- what the wrapper is -------------------------------------------------------------

    @property
    def retention_wrapped_saver(self) -> BaseCheckpointSaver[Any]:
        """The wrapped checkpointer (the engine prunes it directly)."""
        return self._saver

    @property
    def counters(self) -> RetainingCounters:
        """A snapshot of the put counts and of what inline prunes did."""
        with self._stats_lock, self._counter.lock:
            return RetainingCounters(
                **self._counts,
                puts=self._counter.puts,
                triggered=self._counter.triggered,
                tracked_threads=len(self._counter.counts),
                evicted=self._counter.evicted,
            )

    def __repr__(self) -> str:
        knob = "every" if self.mode == "inline" else "threshold"
        return (
            f"RetainingSaver({self._saver!r}, {self.policy!r}, mode={self.mode!r}, "
            f"{knob}={self.trigger})"
        )

    def __getattr__(self, name: str) -> Any:
        """Public attributes the wrapper does not define come from the wrapped saver
        (`setup()`, `conn`, ...), so it drops in where the saver was used."""
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            saver = self.__dict__["_saver"]
        except KeyError:
            raise AttributeError(name) from None
        return getattr(saver, name)

    @property  # type: ignore[override]
    def serde(self) -> SerializerProtocol:
        """The wrapped saver's serializer (setting it sets the wrapped saver's)."""
        return self._saver.serde

    @serde.setter
    def serde(self, value: SerializerProtocol) -> None:
        self._saver.serde = value

    @property
    def config_specs(self) -> builtins.list[Any]:
        return self._saver.config_specs

    def with_allowlist(self, extra_allowlist: Collection[tuple[str, ...]]) -> RetainingSaver:
        """A wrapper around the wrapped saver's `with_allowlist` clone, sharing this
        wrapper's counters and pruner (LangGraph calls it at compile time in strict
        msgpack mode)."""
        saver = self._saver.with_allowlist(extra_allowlist)
        if saver is self._saver:
            return self
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._saver = saver
        return clone

    # -- counting puts ------------------------------------------------------------------

    def _due(self, config: RunnableConfig) -> str | None:
        """Count a put; the thread id when this put should trigger retention.

        Only root-namespace puts count: subgraph checkpoints come with their parent's,
        and a prune covers every namespace of the thread anyway.
        """
        configurable = config.get("configurable") or {}
        thread_id = configurable.get("thread_id")
        if thread_id is None or configurable.get("checkpoint_ns"):
            self._counter.hit(None, self.trigger)
            return None
        thread_id = str(thread_id)
        return thread_id if self._counter.hit(thread_id, self.trigger) else None

    def _hand_off(self, thread_id: str) -> None:
        assert self.pruner is not None
        accepted = self.pruner.request(thread_id)
        with self._stats_lock:
            self._counts["handed_off" if accepted else "dropped"] += 1

    def _inline_done(
        self, thread_id: str, report: PruneReport | None, exc: BaseException | None
    ) -> None:
        with self._stats_lock:
            if report is not None and report.ok:
                self._counts["pruned"] += 1
                self._counts["deleted_checkpoints"] += report.deleted_checkpoints
            else:
                self._counts["failed"] += 1
        if exc is not None:
            logger.error(
                "inline prune of thread %r failed; the run goes on", thread_id, exc_info=exc
            )
        elif report is not None and not report.ok:
            logger.error(
                "inline prune of thread %r refused; the run goes on: %s",
                thread_id,
                report.errors.get(thread_id, "; ".join(report.errors.values())),
            )

    def _retain(self, thread_id: str) -> None:
        if self.mode == "background":
            self._hand_off(thread_id)
            return
        try:
            report = prune_thread(self._saver, thread_id, self.policy)
        except Exception as exc:
            self._inline_done(thread_id, None, exc)
        else:
            self._inline_done(thread_id, report, None)

    async def _aretain(self, thread_id: str) -> None:
        if self.mode == "background":
            self._hand_off(thread_id)
            return
        try:
            report = await aprune_thread(self._saver, thread_id, self.policy)
        except Exception as exc:
            self._inline_done(thread_id, None, exc)
        else:
            self._inline_done(thread_id, report, None)

    # -- writes (counted) ------------------------------------------------------------

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        stored = self._saver.put(config, checkpoint, metadata, new_versions)
        if (thread_id := self._due(config)) is not None:
            self._retain(thread_id)
        return stored

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        stored = await self._saver.aput(config, checkpoint, metadata, new_versions)
        if (thread_id := self._due(config)) is not None:
            await self._aretain(thread_id)
        return stored

    # -- everything else: forwarded ----------------------------------------------------

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._saver.put_writes(config, writes, task_id, task_path)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._saver.aput_writes(config, writes, task_id, task_path)

    def get(self, config: RunnableConfig) -> Checkpoint | None:
        return self._saver.get(config)

    async def aget(self, config: RunnableConfig) -> Checkpoint | None:
        return await self._saver.aget(config)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._saver.get_tuple(config)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._saver.aget_tuple(config)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        return self._saver.list(config, filter=filter, before=before, limit=limit)

    def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        return self._saver.alist(config, filter=filter, before=before, limit=limit)

    def delete_thread(self, thread_id: str) -> None:
        self._saver.delete_thread(thread_id)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._saver.adelete_thread(thread_id)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._saver.delete_for_runs(run_ids)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._saver.adelete_for_runs(run_ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._saver.copy_thread(source_thread_id, target_thread_id)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._saver.acopy_thread(source_thread_id, target_thread_id)

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return self._saver.get_delta_channel_history(config=config, channels=channels)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await self._saver.aget_delta_channel_history(config=config, channels=channels)

    def get_next_version(self, current: Any, channel: None) -> Any:
        return self._saver.get_next_version(current, channel)

    # -- prune: BaseCheckpointSaver's contract, on this project's engine ---------------

    def _keep_latest_policy(self) -> RetentionPolicy:
        return RetentionPolicy(keep_last=1, delta_channels=self.policy.delta_channels)

    @staticmethod
    def _check_prune_args(thread_ids: Sequence[str], strategy: str) -> builtins.list[str]:
        if strategy not in _PRUNE_STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(map(repr, _PRUNE_STRATEGIES))}, "
                f"got {strategy!r}"
            )
        if isinstance(thread_ids, str):
            raise TypeError("thread_ids must be a sequence of thread ids, not a single str")
        return list(thread_ids)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Prune the given threads: "keep_latest" keeps the newest checkpoint of every
        namespace (plus the DeltaChannel ancestry it needs to load, which the policy
        always keeps), "delete" deletes the threads. Raises `PruneError` when a thread
        could not be pruned (the others were)."""
        ids = self._check_prune_args(thread_ids, strategy)
        if strategy == "delete":
            for thread_id in ids:
                self.delete_thread(thread_id)
            return
        report = sweep(self._saver, self._keep_latest_policy(), thread_ids=ids)
        if not report.ok:
            raise PruneError(report)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Async `prune`."""
        ids = self._check_prune_args(thread_ids, strategy)
        if strategy == "delete":
            sync_only = not _overrides(type(self._saver), "adelete_thread") and _overrides(
                type(self._saver), "delete_thread"
            )
            for thread_id in ids:
                if sync_only:  # e.g. SqliteSaver: its sync delete, off the event loop
                    await asyncio.to_thread(self._saver.delete_thread, thread_id)
                else:
                    await self.adelete_thread(thread_id)
            return
        report = await asweep(self._saver, self._keep_latest_policy(), thread_ids=ids)
        if not report.ok:
            raise PruneError(report)

    # -- lifecycle --------------------------------------------------------------------

    def close(self, timeout: float | None = 30.0) -> bool:
        """Drain and stop the background pruner this wrapper owns (a no-op otherwise).

        Returns True when nothing was left unpruned. The wrapped saver stays open: it is
        the caller's, and closing it is the caller's call.
        """
        if self.pruner is not None and self._owns_pruner:
            return self.pruner.close(timeout)
        return True

    async def aclose(self, timeout: float | None = 30.0) -> bool:
        """Async `close` (for async savers, run it on the saver's event loop)."""
        if self.pruner is not None and self._owns_pruner:
            return await self.pruner.aclose(timeout)
        return True

    def __enter__(self) -> Self:
        enter = getattr(self._saver, "__enter__", None)
        if enter is not None:
            enter()
        if self.pruner is not None and self._owns_pruner and self.pruner.runner == "thread":
            self.pruner.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            self.close()
        finally:
            exit_ = getattr(self._saver, "__exit__", None)
            result = exit_(exc_type, exc, tb) if exit_ is not None else None
        return bool(result) if result is not None else None

    async def __aenter__(self) -> Self:
        aenter = getattr(self._saver, "__aenter__", None)
        if aenter is not None:
            await aenter()
        if self.pruner is not None and self._owns_pruner:
            await self.pruner.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            await self.aclose()
        finally:
            aexit = getattr(self._saver, "__aexit__", None)
            result = await aexit(exc_type, exc, tb) if aexit is not None else None
        return bool(result) if result is not None else None
