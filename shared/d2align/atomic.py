"""Writing files so that a reader never sees half of one.

A result, record or checkpoint file is written to a temporary file in the same folder, flushed
to disk (fsync), then renamed over its final name (atomic on POSIX). A crash, a kill or a full
disk while writing leaves the old file (or none) and a stray `.tmp-*` file, never a truncated
file under the final name that a later run would take as finished.
"""

import contextlib
import os
import tempfile
from typing import IO, Iterator

__all__ = ["atomic_write", "atomic_write_text"]


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing ("w" or "wb"); on a clean exit of the
    block it is fsynced and renamed to `path`; on an exception it is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp-{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    """Write `text` to `path` atomically (see the module docstring)."""
    with atomic_write(str(path)) as f:
        f.write(text)
