"""A second process for the lock tests: `python -m tests.lock_holder URL` takes the store's
sweep lock, prints {"held": bool, "pid": int}, and holds it until its stdin closes."""

from __future__ import annotations

import json
import os
import sys

from langgraph_retention.backends import resolve_backend
from langgraph_retention.urls import open_store


def main(url: str) -> int:
    with open_store(url) as saver:
        lock = resolve_backend(saver).sweep_lock()
        taken = lock.acquire() is None
        print(json.dumps({"held": taken, "pid": os.getpid()}), flush=True)
        try:
            sys.stdin.read()
        finally:
            lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
