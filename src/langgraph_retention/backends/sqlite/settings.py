"""Our connection settings for the length of one write transaction, the app's put back after.

The saver's connection is the app's: each setting is read before BEGIN, changed only
where ours does better, and restored as soon as the transaction ends.

- Page cache: a batch's delete dirties thousands of pages (a leaf per scattered row, the
  freelist trunk, inner pages). With SQLite's default 2 MB cache the hot ones are spilled
  to the WAL, evicted, read back and spilled again (measured on a scattered 2,000-thread
  store, one batch of 100 threads: 37,700 WAL frames written and 51,000 read back for
  24,300 distinct pages; with 16 MB: 24,300 and 24,300). Never shrunk.
- `synchronous = NORMAL` in WAL mode: the commit appends to the WAL without an fsync,
  which then happens in the checkpoint that follows, after the write lock is released.
  The app's writers wait for our lock that much less. A pruning transaction lost to a
  power cut is undone whole (WAL mode stays consistent) and the next sweep redoes it.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

__all__ = ["WRITE_CACHE_KIB", "wider_cache", "write_settings_program"]

#: Our page cache while a write transaction runs, in KiB (a negative `cache_size`).
WRITE_CACHE_KIB = 16 * 1024

#: SQLite's `synchronous` levels: OFF 0, NORMAL 1, FULL 2, EXTRA 3.
NORMAL = 1

#: The connection's cache (pages when positive, KiB when negative), page size, journal
#: mode and sync level, in one read.
SETTINGS_SQL = """
SELECT cache_size, page_size, journal_mode, synchronous
FROM pragma_cache_size, pragma_page_size, pragma_journal_mode, pragma_synchronous
"""

#: PRAGMA takes no bound parameters; the values are always ints we read or computed.
SET_CACHE_SQL = "PRAGMA cache_size = {value:d}"
SET_SYNCHRONOUS_SQL = "PRAGMA synchronous = {value:d}"


def wider_cache(cache_size: int, page_size: int, kib: int = WRITE_CACHE_KIB) -> int | None:
    """The `cache_size` to set for `kib` KiB of cache, or None when the connection's
    own setting is already as big (we never shrink an app's cache)."""
    current_kib = -cache_size if cache_size < 0 else cache_size * page_size // 1024
    return -kib if current_kib < kib else None


def write_settings_program() -> Generator[tuple[str, Sequence[Any]], list[Any], list[str]]:
    """Apply our settings; returns the statements that put the connection's back (run
    them in reverse order)."""
    ((cache_size, page_size, journal_mode, synchronous),) = yield SETTINGS_SQL, ()
    restore = []
    wider = wider_cache(int(cache_size), int(page_size))
    if wider is not None:
        yield SET_CACHE_SQL.format(value=wider), ()
        restore.append(SET_CACHE_SQL.format(value=int(cache_size)))
    if str(journal_mode).lower() == "wal" and int(synchronous) > NORMAL:
        yield SET_SYNCHRONOUS_SQL.format(value=NORMAL), ()
        restore.append(SET_SYNCHRONOUS_SQL.format(value=int(synchronous)))
    return restore
