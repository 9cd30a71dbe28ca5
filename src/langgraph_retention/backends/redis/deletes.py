"""A batch's deletes as data: per thread its doomed keys in a safe order, the Lua calls
(each a transaction of at most `LUA_KEYS` keys) that size and delete them, and the
program that runs them; a thread's counts grow as each of its calls commits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from langgraph_retention.report import ThreadResult

from .model import Command, Program
from .scripts import LUA_KEYS, SIZE_AND_DELETE_LUA, SIZE_AND_DELETE_SHA, _kinds


@dataclass(slots=True)
class _Job:
    """One thread's deletes: its write keys first, then each doomed checkpoint's registry
    and the checkpoint itself (stopped between calls, a sweep leaves doomed checkpoints,
    found again next time, never writes of a deleted one)."""

    result: ThreadResult
    writes: list[str]
    checkpoints: list[tuple[str, str]]  # (registry, checkpoint) keys
    #: (pointer, key) pairs repaired after the job's last delete.
    pointers: list[str]
    #: (pointer, newest key) pairs that must still hold (an expiring thread).
    guards: list[str] = field(default_factory=list)
    #: Sizes measured while planning (`max_bytes`); the script then deletes unsized.
    sizes: Mapping[str, int] | None = None
    #: Whether the script refused the job's first call (None: not run yet).
    refused_first: bool | None = None

    def all_keys(self) -> list[str]:
        """Every key in delete order."""
        return self.writes + [k for pair in self.checkpoints for k in pair]


@dataclass(slots=True)
class _Call:
    """One Lua call of a job, and what it deletes (counted once it commits)."""

    job: _Job
    command: Command
    checkpoints: int
    writes: int
    presized: int


def _job(
    result: ThreadResult,
    writes: list[str],
    checkpoints: list[tuple[str, str]],
    pointers: list[str],
    guards: list[str],
    sizes: Mapping[str, int] | None,
) -> _Job:
    """A thread's job; `sizes` is kept only when it measured every key of the job."""
    job = _Job(result, writes, checkpoints, pointers, guards)
    if sizes is not None and all(k in sizes for k in job.all_keys()):
        job.sizes = sizes
    return job


def _calls(jobs: Sequence[_Job], delete: bool) -> list[_Call]:
    """The Lua calls of `jobs`, at most `LUA_KEYS` keys each; a job's guards ride on
    every call, its pointer repairs on its last."""
    calls: list[_Call] = []
    for job in jobs:
        keys = job.all_keys()
        n_writes = len(job.writes)
        starts = list(range(0, len(keys), LUA_KEYS)) or [0]
        presized = delete and job.sizes is not None
        for start in starts:
            chunk = keys[start : start + LUA_KEYS]
            end = start + len(chunk)
            mode = ("2" if presized else "1") if delete else "0"
            argv = [mode + ("" if presized else _kinds(chunk)), str(len(job.guards) // 2)]
            argv += job.guards
            argv += job.pointers if start == starts[-1] else []
            writes = max(0, min(end, n_writes) - start)
            # A checkpoint counts in the call that deletes its key (after its registry).
            checkpoints = sum(1 for i in range(max(start, n_writes), end) if (i - n_writes) % 2)
            measured = sum(job.sizes[k] for k in chunk) if presized and job.sizes else 0
            command = ("EVALSHA", SIZE_AND_DELETE_SHA, len(chunk), *chunk, *argv)
            calls.append(_Call(job, command, checkpoints, writes, measured))
    return calls


def _delete_program(jobs: Sequence[_Job], dry_run: bool) -> Program[None]:
    """Size and delete (a dry run: size) every job's keys in one round trip; each call
    that commits adds what it deleted to its thread's result."""
    if not jobs:
        return
    calls = _calls(jobs, delete=not dry_run)
    replies = yield [("SCRIPT", "LOAD", SIZE_AND_DELETE_LUA), *(c.command for c in calls)]
    for call, reply in zip(calls, replies[1:], strict=True):
        _settle(call, int(reply or 0))


def _settle(call: _Call, size: int) -> None:
    """Count a call's deletes into its thread's result, or note the script's refusal."""
    job, result = call.job, call.job.result
    first = job.refused_first is None
    if size < 0:
        if first:
            job.refused_first = True
            _left_whole(result, planned=len(job.checkpoints))
        elif (
            not job.refused_first
            and _REFUSED_MIDWAY.format(result.thread_id) not in result.warnings
        ):
            result.warnings.append(_REFUSED_MIDWAY.format(result.thread_id))
        return
    if first:
        job.refused_first = False
    result.deleted_checkpoints += call.checkpoints
    result.deleted_writes += call.writes
    result.bytes_freed += size + call.presized


#: An expiring thread a run wrote to after some of its calls went.
_REFUSED_MIDWAY = (
    "thread {!r} was written to while it was being deleted; its newest checkpoints stay"
)


def _left_whole(result: ThreadResult, planned: int) -> None:
    """An expired thread a run wrote to after the decision: the script refused it whole."""
    result.kept_checkpoints += planned  # every one it read stays
    result.deleted_checkpoints = result.deleted_writes = result.bytes_freed = 0
    result.expired, result.decisions = None, None
    result.warnings.append(
        f"thread {result.thread_id!r} was written to since it expired; it was left whole"
    )
