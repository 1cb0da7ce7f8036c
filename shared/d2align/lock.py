"""A lock file naming its holder, so that two processes never write into one folder at once.

Used by the suites (`<out>/suite.lock`, a run's `suite_run.lock`) and by every training or
evaluation (`OUTPUT_DIR/train.lock`, see `d2align.engine.launcher`).

The lock is `fcntl.flock` on `<folder>/<name>`, held for the holder's life: the kernel drops it
when the holder exits, however it exits (even SIGKILL), so a lock left by a dead process is
never in the way and is simply taken over. The file also records the holder (PID, host,
start, command) for the message another process gets: `LockHeld`, naming that PID.
"""

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

__all__ = ["DirLock", "LockHeld"]


class LockHeld(RuntimeError):
    """The lock is held by another process; `holder` is the record it wrote."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


class DirLock:
    """An exclusive lock on a folder, held through the file `<folder>/<name>`.

    Args:
        folder: the folder to lock (created if missing).
        name: the lock file's name.
        what: what holds it, for the messages (e.g. "suite", "training").
    """

    def __init__(self, folder: Path, name: str = "suite.lock", what: str = "suite"):
        self.path = Path(folder) / name
        self.what = what
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def read(self) -> dict:
        """The record of the last holder ({} when there is none or it is unreadable)."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def describe(self, holder: dict) -> str:
        started = holder.get("started")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
        return (
            f"{self.path.parent} is in use by another {self.what}: PID {holder.get('pid', '?')} "
            f"on {holder.get('host', '?')}, since {since} ({holder.get('command', '?')}); "
            f"lock file {self.path}"
        )

    def try_acquire(self) -> Optional[dict]:
        """Take the lock; returns None on success (or if already held by this object), else
        the holder's record. A lock file whose holder is gone is taken over."""
        if self.held:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self.read()
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(sys.argv) or "?",
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return None

    def acquire(self) -> "DirLock":
        """Take the lock or raise `LockHeld` naming the holder."""
        holder = self.try_acquire()
        if holder is not None:
            raise LockHeld(self.describe(holder), holder)
        return self

    def release(self) -> None:
        """Give the lock up. The file stays (emptied): removing it would let a process that
        opened it just before take a lock on a file no one else sees."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
