"""Checks and small helpers the tasks share: limits, argument checks, error triage."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from langgraph_retention.config import (
    policy_from_mapping,
    policy_to_mapping,
    settings_from_mapping,
)
from langgraph_retention.engine import check_store
from langgraph_retention.engine import sweep_lock as store_sweep_lock
from langgraph_retention.errors import RetentionError, StoreUnavailableError, UsageError
from langgraph_retention.lock import SweepLock
from langgraph_retention.policy import RetentionPolicy
from langgraph_retention.report import PruneReport
from langgraph_retention.rules import ThreadRules

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FOLD_POLL_SECONDS",
    "FOLD_WINDOW",
    "MAX_SHARD_SIZE",
    "PolicyLike",
    "batched",
    "check_result_backend",
    "check_shard_size",
    "check_thread_ids",
    "failed_report",
    "healthy",
    "lock_unless",
    "plain_policy",
    "policy_source",
    "shown",
    "transient",
]

#: Threads per `prune_shard` task unless asked otherwise (each pruned in engine batches),
#: and the most one message may carry.
DEFAULT_SHARD_SIZE = 250
MAX_SHARD_SIZE = 10_000
#: The fold's wait between looks at the shards: right after progress, and at most.
FOLD_POLL_SECONDS = (0.2, 5.0)
#: Shard results the fold reads per look, oldest first.
FOLD_WINDOW = 200

#: A policy as callers give it: a `RetentionPolicy`, `ThreadRules`, or their plain data
#: (a policy's keys, or the settings file's shape: `{"policy": {...}, "rules": [...]}`).
PolicyLike = RetentionPolicy | ThreadRules | Mapping[str, Any]
_RULES_KEYS = frozenset({"policy", "rules"})


def policy_source(data: Any) -> RetentionPolicy | ThreadRules:
    """The policy (or per-thread rules) plain data describes; `UsageError` naming the key
    for anything wrong. Rules use the settings file's `[policy]` / `[[rules]]` shape."""
    if isinstance(data, Mapping) and _RULES_KEYS & set(data):
        if extra := sorted(set(data) - _RULES_KEYS):
            raise UsageError(f"policy: unknown key {', '.join(map(repr, extra))} beside rules")
        source = settings_from_mapping(data, source="policy").policy_source()
        if isinstance(source, RetentionPolicy | ThreadRules):
            return source
    return policy_from_mapping(data, where="policy")


def plain_policy(policy: PolicyLike) -> dict[str, Any]:
    """`policy` checked, as the JSON-ready data that travels to workers."""
    if isinstance(policy, Mapping):
        policy = policy_source(policy)
    if isinstance(policy, RetentionPolicy):
        return policy_to_mapping(policy)
    if not isinstance(policy, ThreadRules):
        raise UsageError(
            "policy must be a RetentionPolicy, ThreadRules or their plain data; a resolver "
            f"function cannot travel to workers (got {type(policy).__name__})"
        )
    if not isinstance(policy.default, RetentionPolicy):
        raise UsageError("rules sent to workers need a default policy (exempt by pattern)")
    rules = [
        {"match": pattern, "exempt": True}
        if not isinstance(resolution, RetentionPolicy)
        else {"match": pattern, **policy_to_mapping(resolution)}
        for pattern, resolution in policy.rules
    ]
    return {"policy": policy_to_mapping(policy.default), "rules": rules}


def check_thread_ids(value: Any) -> list[str]:
    """A shard's thread ids (a JSON list of strings), duplicates dropped."""
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise UsageError(f"thread_ids must be a list of thread ids, got {value!r:.80}")
    if bad := [t for t in value if not isinstance(t, str)]:
        raise UsageError(f"thread ids must be strings, got {bad[0]!r}")
    return list(dict.fromkeys(value))


def check_shard_size(value: Any) -> int:
    """Threads per shard: bounded, so one message never grows without limit."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SHARD_SIZE:
        raise UsageError(f"shard_size must be a whole number from 1 to {MAX_SHARD_SIZE}: {value!r}")
    return value


def batched(ids: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of `size` ids as the stream yields them (the last one shorter)."""
    batch: list[str] = []
    for tid in ids:
        batch.append(tid)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def failed_report(ids: Sequence[str], exc: BaseException, dry_run: bool) -> PruneReport:
    """A report of `ids` all failed with `exc` (the store could not be used at all)."""
    report = PruneReport(dry_run=dry_run)
    for tid in ids:
        report.threads_seen += 1
        report.errors[tid] = f"{type(exc).__name__}: {exc}"
    return report


def transient(exc: BaseException) -> bool:
    """Whether trying again later may help: not for our own verdicts on the store (a
    wrong URL, no checkpoint tables), except that its server could not be reached."""
    return isinstance(exc, StoreUnavailableError) or not isinstance(exc, RetentionError)


def lock_unless(dry_run: bool, saver: Any) -> AbstractContextManager[SweepLock | None]:
    """The store's sweep lock for a real sweep; a dry run deletes nothing and takes none."""
    return nullcontext() if dry_run else store_sweep_lock(saver)


def check_result_backend(app: Any) -> None:
    """Refuse a fleet sweep the fold could not finish: shard results must be readable by
    whichever worker folds them (not `rpc://`, which only the sender reads)."""
    kind = type(app.backend).__name__
    if kind in ("DisabledBackend", "RPCBackend"):
        raise UsageError(
            f"fleet sweeps need a shared result backend (result_backend=redis://... or a "
            f"database); this app's is {kind}"
        )


def healthy(saver: Any) -> bool:
    """Whether the store still answers (a read-only schema check)."""
    try:
        check_store(saver)
    except Exception:
        return False
    return True


def shown(ids: Sequence[str], limit: int = 20) -> str:
    more = len(ids) - limit
    return ", ".join(map(repr, ids[:limit])) + (f" and {more} more" if more > 0 else "")
