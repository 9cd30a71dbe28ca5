"""The chat path: what `RetainingSaver` adds to a `put`, and to a reply while a sweep runs.

Part 1 - put latency. The bare saver, `RetainingSaver` inline (`every`) and background
(`threshold`) each get their own store (SQLite: own file; PostgreSQL: own schema) and
the same stream of real checkpoints (recorded from the demo agent, replayed to
`--threads` threads round-robin). Puts are interleaved one by one across the contenders,
in rotating order, so drift and noise hit all of them alike. Every put is timed; the
table gives median / p99 / mean and the ratios to the bare saver.

Part 2 - a chat loop (the demo agent's turns, through a background-mode RetainingSaver)
while a large `sweep` runs, against the same loop with no sweep. The store holds
`--sweep-threads` threads (real agent checkpoints, copied in SQL). Each round restores
the store from a pristine copy, then runs: the sweep on the app's own saver (what an
in-process scheduler does), the sweep on a separate connection (a cron job / the CLI),
and no sweep; turn latencies are pooled over `--rounds` rounds.

    python benchmarks/bench_put_latency.py [--threads 50] [--puts 4000] [--keep 10]
        [--every 20] [--threshold 30] [--sweep-threads 2000] [--rounds 3]
        [--pg-url postgresql://...] [--no-postgres] [--dir DIR]

PostgreSQL runs when `--pg-url` is given (a database you may create schemas in; they
are dropped at the end) or a server answers on 127.0.0.1:5432 (a scratch database is
created there and dropped). Nothing here is a test: timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fixtures_postgres

from langgraph_retention import RetentionPolicy, prune_thread, stats, sweep
from langgraph_retention.demo import build_agent, chat
from langgraph_retention.report import PruneReport
from langgraph_retention.saver import RetainingSaver
from langgraph_retention.worker import BackgroundPruner

# -- the checkpoint stream ---------------------------------------------------------------

Step = tuple[Checkpoint, CheckpointMetadata, dict[str, Any]]


def record_stream(turns: int = 8) -> list[Step]:
    """Real checkpoints of the demo agent, oldest first, with the versions each put
    writes (the channels that changed since the previous checkpoint, as LangGraph does)."""
    saver = InMemorySaver()
    chat(build_agent(saver), "recording", turns)
    tuples = list(saver.list({"configurable": {"thread_id": "recording"}}))[::-1]
    stream: list[Step] = []
    previous: dict[str, Any] = {}
    for t in tuples:
        versions = t.checkpoint["channel_versions"]
        new_versions = {ch: v for ch, v in versions.items() if previous.get(ch) != v}
        stream.append((t.checkpoint, t.metadata, new_versions))
        previous = dict(versions)
    return stream


class Replayer:
    """Puts the recorded stream to many threads, each thread a chain like a real run."""

    def __init__(self, stream: list[Step], threads: int, prefix: str) -> None:
        self.stream = stream
        self.thread_ids = [f"{prefix}:{i:05d}" for i in range(threads)]
        self.position = [0] * threads
        self.parent: list[str | None] = [None] * threads

    def next_put(self, i: int) -> tuple[dict[str, Any], Checkpoint, CheckpointMetadata, Any]:
        k = i % len(self.thread_ids)
        checkpoint, metadata, new_versions = self.stream[self.position[k] % len(self.stream)]
        self.position[k] += 1
        cp = dict(checkpoint)
        cp["id"] = str(uuid6(clock_seq=self.position[k]))
        configurable = {"thread_id": self.thread_ids[k], "checkpoint_ns": ""}
        if self.parent[k] is not None:
            configurable["checkpoint_id"] = self.parent[k]
        self.parent[k] = cp["id"]
        return {"configurable": configurable}, cp, metadata, new_versions  # type: ignore[return-value]


# -- statistics ---------------------------------------------------------------------------


@dataclass
class Samples:
    name: str
    seconds: list[float] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.seconds)

    def p99(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def mean(self) -> float:
        return statistics.fmean(self.seconds)


def table(title: str, rows: list[Samples], unit: str, scale: float, baseline: Samples) -> None:
    print(f"\n{title}")
    head = (
        f"  {'contender':<44}{'n':>7}{'median ' + unit:>13}{'p99 ' + unit:>12}"
        f"{'mean ' + unit:>12}{'median x':>10}{'p99 x':>8}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for s in rows:
        if not s.seconds:
            print(f"  {s.name:<44}{0:>7}  (no samples: the sweep ended before a turn did)")
            continue
        print(
            f"  {s.name:<44}{len(s.seconds):>7}{s.median() * scale:>13.1f}"
            f"{s.p99() * scale:>12.1f}{s.mean() * scale:>12.1f}"
            f"{s.median() / baseline.median():>10.3f}{s.p99() / baseline.p99():>8.3f}"
        )


# -- part 1: put latency --------------------------------------------------------------------


@dataclass
class Contender:
    name: str
    saver: BaseCheckpointSaver[Any]
    replayer: Replayer
    samples: Samples


def measure_puts(contenders: list[Contender], puts: int, warmup: int) -> None:
    """Interleave single puts across the contenders, rotating the order every round."""
    n = len(contenders)
    clock = time.perf_counter
    gc.collect()
    for i in range(warmup + puts):
        for j in range(n):
            c = contenders[(i + j) % n]
            config, cp, metadata, versions = c.replayer.next_put(i)
            start = clock()
            c.saver.put(config, cp, metadata, versions)  # type: ignore[arg-type]
            elapsed = clock() - start
            if i >= warmup:
                c.samples.seconds.append(elapsed)


def make_contenders(
    savers: list[BaseCheckpointSaver[Any]], args: argparse.Namespace, stream: list[Step]
) -> list[Contender]:
    bare, dormant_inner, inline_inner, background_inner = savers
    policy = RetentionPolicy(keep_last=args.keep)
    wrapped: list[tuple[str, BaseCheckpointSaver[Any]]] = [
        (f"bare {type(bare).__name__}", bare),
        (  # the wrapper's own cost: counting, never pruning
            "RetainingSaver, never due",
            RetainingSaver(dormant_inner, policy, mode="inline", every=10**9),
        ),
        (
            f"RetainingSaver inline every={args.every}",
            RetainingSaver(inline_inner, policy, mode="inline", every=args.every),
        ),
        (
            f"RetainingSaver background thr={args.threshold}",
            RetainingSaver(background_inner, policy, mode="background", threshold=args.threshold),
        ),
    ]
    return [
        Contender(name, saver, Replayer(stream, args.threads, f"user{k}"), Samples(name))
        for k, (name, saver) in enumerate(wrapped)
    ]


def report_puts(title: str, contenders: list[Contender]) -> None:
    table(title, [c.samples for c in contenders], "us", 1e6, contenders[0].samples)
    for c in contenders:
        if isinstance(c.saver, RetainingSaver):
            rc = c.saver.counters
            line = f"    {c.name}: {rc.triggered} triggers"
            if c.saver.pruner is not None:
                drained = c.saver.close(timeout=120)
                pc = c.saver.pruner.counters
                line += (
                    f", background pruned {pc.pruned} (failed {pc.failed}, dropped "
                    f"{pc.dropped}, de-duplicated {pc.deduplicated}), "
                    f"{pc.deleted_checkpoints} checkpoints deleted, drained={drained}"
                )
            else:
                line += f", inline pruned {rc.pruned} (failed {rc.failed}), "
                line += f"{rc.deleted_checkpoints} checkpoints deleted"
            print(line)
    for c in contenders:
        left = stats(c.saver).total_checkpoints
        print(f"    checkpoints left: {c.name}: {left}")


SEED_CHECKPOINTS = 36  # the seed's example thread
SEED_KEEP = 10


def seed_prune_cost(saver: BaseCheckpointSaver[Any], stream: list[Step], label: str) -> None:
    """What one inline prune costs the reply that triggers it, in the seed's example: a
    thread of 36 checkpoints pruned to 10 (the seed claimed 1-5 s for this)."""
    replayer = Replayer(stream, 40, f"seed-{label}")
    for i in range(40 * SEED_CHECKPOINTS):
        config, cp, metadata, versions = replayer.next_put(i)
        saver.put(config, cp, metadata, versions)  # type: ignore[arg-type]
    policy = RetentionPolicy(keep_last=SEED_KEEP)
    timings = Samples("prune")
    for tid in replayer.thread_ids:
        start = time.perf_counter()
        report = prune_thread(saver, tid, policy)
        timings.seconds.append(time.perf_counter() - start)
        assert report.ok and report.deleted_checkpoints == SEED_CHECKPOINTS - SEED_KEEP
    print(
        f"    one inline prune, {label}, a {SEED_CHECKPOINTS}-checkpoint thread to "
        f"{SEED_KEEP} (the seed's 1-5 s case): median {timings.median() * 1e3:.1f} ms, "
        f"max {max(timings.seconds) * 1e3:.1f} ms over {len(timings.seconds)} threads"
    )


def sqlite_puts(args: argparse.Namespace, workdir: Path, stream: list[Step]) -> None:
    conns = [
        sqlite3.connect(str(workdir / f"puts-{k}.db"), check_same_thread=False) for k in range(4)
    ]
    savers: list[BaseCheckpointSaver[Any]] = [SqliteSaver(c) for c in conns]
    for s in savers:
        s.setup()  # type: ignore[attr-defined]
    contenders = make_contenders(savers, args, stream)
    measure_puts(contenders, args.puts, args.warmup)
    report_puts(
        f"put latency, SQLite ({args.threads} threads, {args.puts} timed puts per contender, "
        f"keep {args.keep})",
        contenders,
    )
    seed_prune_cost(savers[0], stream, "SQLite")
    for c in conns:
        c.close()


# -- PostgreSQL -------------------------------------------------------------------------


def _answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@contextmanager
def postgres_database(args: argparse.Namespace) -> Iterator[str | None]:
    """The URL to benchmark on, or None (with the reason printed) when there is none."""
    if args.no_postgres:
        yield None
        return
    if args.pg_url:
        yield args.pg_url
        return
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    if not _answers(local):
        print("\nPostgreSQL: nothing answers on 127.0.0.1:5432 and no --pg-url; skipped")
        yield None
        return
    from tests.fixtures_postgres import scratch_database

    with scratch_database(local, prefix="lgr_bench_put") as url:
        yield url


def postgres_puts(args: argparse.Namespace, url: str, stream: list[Step]) -> None:
    import psycopg
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    schemas = [f"lgr_put_{secrets.token_hex(3)}_{k}" for k in range(4)]
    pools = []
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            for schema in schemas:
                admin.execute(f'CREATE SCHEMA "{schema}"')
        savers: list[BaseCheckpointSaver[Any]] = []
        for schema in schemas:
            pool = ConnectionPool(
                url,
                min_size=2,
                max_size=4,
                kwargs={
                    "autocommit": True,
                    "prepare_threshold": 0,
                    "row_factory": dict_row,
                    "options": f"-c search_path={schema}",
                },
                open=True,
            )
            pools.append(pool)
            saver = PostgresSaver(pool)  # type: ignore[arg-type]
            saver.setup()
            savers.append(saver)
        contenders = make_contenders(savers, args, stream)
        measure_puts(contenders, args.puts, args.warmup)
        report_puts(
            f"put latency, PostgreSQL, pooled connections ({args.threads} threads, "
            f"{args.puts} timed puts per contender, keep {args.keep})",
            contenders,
        )
        seed_prune_cost(savers[0], stream, "PostgreSQL")
    finally:
        for pool in pools:
            pool.close()
        with psycopg.connect(url, autocommit=True) as admin:
            for schema in schemas:
                admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- part 2: a chat loop while a sweep runs -------------------------------------------------

TEMPLATE_THREADS = 10


def build_big_store(path: Path, threads: int, turns: int) -> int:
    """A store of `threads` threads: real agent threads, copied in SQL under new ids."""
    conn = sqlite3.connect(str(path), check_same_thread=False)
    graph = build_agent(SqliteSaver(conn))
    for t in range(TEMPLATE_THREADS):
        chat(graph, f"template:{t}", turns)
    copies = max(0, threads // TEMPLATE_THREADS - 1)
    columns = {
        table: [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        for table in ("checkpoints", "writes")
    }
    cp_cols = ", ".join(columns["checkpoints"])
    cp_rest = ", ".join(columns["checkpoints"][1:])
    wr_cols = ", ".join(columns["writes"])
    wr_rest = ", ".join(columns["writes"][1:])
    assert columns["checkpoints"][0] == columns["writes"][0] == "thread_id"
    conn.executescript(
        f"""
        BEGIN;
        CREATE TEMP TABLE n AS WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1
            FROM c WHERE i < {copies}) SELECT i FROM c WHERE {copies} > 0;
        INSERT INTO checkpoints ({cp_cols}) SELECT
            'user' || n.i || ':' || substr(thread_id, 10), {cp_rest}
            FROM checkpoints, n WHERE thread_id LIKE 'template:%';
        INSERT INTO writes ({wr_cols}) SELECT
            'user' || n.i || ':' || substr(thread_id, 10), {wr_rest}
            FROM writes, n WHERE thread_id LIKE 'template:%';
        COMMIT;
        """
    )
    total = int(conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0])
    conn.close()
    return total


@dataclass(frozen=True)
class SweepMode:
    """Where a sweep runs during the chat loop (None: no sweep), in batches of `batch`."""

    where: str | None
    batch: int = 0

    @property
    def label(self) -> str:
        if self.where is None:
            return "no sweep"
        if self.where == "a BackgroundPruner":
            return "every thread queued to a BackgroundPruner"
        return f"sweep on {self.where}, batch {self.batch}"


def iter_thread_ids(saver: SqliteSaver) -> list[str]:
    rows = saver.conn.execute("SELECT DISTINCT thread_id FROM checkpoints").fetchall()
    return [r[0] for r in rows]


def chat_round(
    path: Path, mode: SweepMode, args: argparse.Namespace, turns: int, out: Samples
) -> tuple[int, float]:
    """Chat turns on a fresh copy of the store, during a sweep (counted while it runs,
    at least `args.min_turns`) or not (`turns` of them). Returns (turns, sweep seconds)."""
    conn = sqlite3.connect(str(path), check_same_thread=False)
    saver = SqliteSaver(conn)
    policy = RetentionPolicy(keep_last=args.keep)
    app = RetainingSaver(saver, policy, mode="background", threshold=args.threshold)
    graph = build_agent(app)
    config = {"configurable": {"thread_id": "live chat"}}
    for _ in range(3):  # warm up
        graph.invoke({"messages": [HumanMessage("hi")]}, config)

    done = threading.Event()
    swept: list[float] = []

    def run_sweep() -> None:
        start = time.perf_counter()
        if mode.where == "a BackgroundPruner":  # every thread queued at once
            pruner = BackgroundPruner(saver, policy, maxsize=args.sweep_threads + 10)
            for tid in iter_thread_ids(saver):
                pruner.request(tid)
            pruner.close(timeout=None)
            c = pruner.counters
            report = PruneReport(errors={"?": f"{c.failed} failed"} if c.failed else {})
        elif mode.where == "the app's saver":  # an in-process scheduler
            report = sweep(saver, policy, batch_size=mode.batch)
        else:  # a cron job or the CLI: a connection of its own
            own = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
            report = sweep(SqliteSaver(own), policy, batch_size=mode.batch)
            own.close()
        swept.append(time.perf_counter() - start)
        assert report.ok, report.errors
        done.set()

    worker = None
    if mode.where is not None:
        worker = threading.Thread(target=run_sweep, name="sweep")
        worker.start()
    n = 0
    while (n < turns) if worker is None else (not done.is_set() or n < args.min_turns):
        start = time.perf_counter()
        graph.invoke({"messages": [HumanMessage(f"where is my order? {n}")]}, config)
        elapsed = time.perf_counter() - start
        if worker is None or not done.is_set():
            out.seconds.append(elapsed)  # during a sweep, only turns that overlapped it
        n += 1
    if worker is not None:
        worker.join()
    app.close(timeout=60)
    conn.close()
    return n, swept[0] if swept else 0.0


def chat_during_sweep(args: argparse.Namespace, workdir: Path) -> None:
    pristine = workdir / "big-pristine.db"
    t0 = time.perf_counter()
    total = build_big_store(pristine, args.sweep_threads, args.turns_per_thread)
    print(
        f"\nbuilt the sweep store: {args.sweep_threads} threads, {total} checkpoints "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    sweeps = [
        SweepMode(where, batch)
        for batch in args.sweep_batches
        for where in ("the app's saver", "its own connection")
    ] + [SweepMode("a BackgroundPruner", 1)]
    idle = SweepMode(None)
    samples = {m: Samples(m.label) for m in [*sweeps, idle]}
    sweep_times: dict[SweepMode, list[float]] = {m: [] for m in sweeps}
    for r in range(args.rounds):
        # sweep modes in rotating order; then the idle loop, as many turns as the
        # longest sweep overlapped; every run on a fresh copy of the store
        overlapped = args.min_turns
        for m in [*sweeps[r % len(sweeps) :], *sweeps[: r % len(sweeps)], idle]:
            copy = workdir / "big.db"
            shutil.copyfile(pristine, copy)
            for suffix in ("-wal", "-shm"):
                Path(str(copy) + suffix).unlink(missing_ok=True)
            before = len(samples[m].seconds)
            _n, seconds = chat_round(copy, m, args, overlapped, samples[m])
            if m.where is not None:
                sweep_times[m].append(seconds)
                overlapped = max(overlapped, len(samples[m].seconds) - before)
    table(
        f"chat turn latency (demo agent through a background RetainingSaver) while a sweep "
        f"of {args.sweep_threads} threads runs; {args.rounds} rounds pooled",
        [samples[m] for m in [idle, *sweeps]],
        "ms",
        1e3,
        samples[idle],
    )
    for m in sweeps:
        print(f"    {m.label}: the sweep took {statistics.median(sweep_times[m]):.2f} s (median)")


# -- main ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=50, help="threads the puts go to")
    ap.add_argument("--puts", type=int, default=8000, help="timed puts per contender")
    ap.add_argument("--warmup", type=int, default=200, help="untimed puts per contender first")
    ap.add_argument("--keep", type=int, default=10)
    ap.add_argument("--every", type=int, default=20, help="inline mode: prune every N puts")
    ap.add_argument("--threshold", type=int, default=30, help="background mode: hand-off at N")
    ap.add_argument("--sweep-threads", type=int, default=2000)
    ap.add_argument("--turns-per-thread", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-turns", type=int, default=30, help="chat turns per round, at least")
    ap.add_argument(
        "--sweep-batches",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[100, 10],
        help="sweep batch sizes to compare (comma-separated)",
    )
    ap.add_argument("--pg-url", default=None)
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--no-puts", action="store_true", help="skip part 1")
    ap.add_argument("--no-chat", action="store_true", help="skip part 2")
    ap.add_argument("--dir", type=Path, default=None, help="where the SQLite files go")
    args = ap.parse_args()

    stream = record_stream()
    with (
        tempfile.TemporaryDirectory(dir=args.dir) as tmp,
        postgres_database(args) as pg_url,
    ):
        workdir = Path(tmp)
        print(f"SQLite files in {workdir}; PostgreSQL: {pg_url or 'not used'}")
        if not args.no_puts:
            sqlite_puts(args, workdir, stream)
            if pg_url:
                postgres_puts(args, pg_url, stream)
        if not args.no_chat:
            chat_during_sweep(args, workdir)


if __name__ == "__main__":
    main()
