"""What the machine lets this process use."""

import os

__all__ = ["usable_cpus"]


def usable_cpus() -> int:
    """The CPU cores this process may run on: its affinity set (`taskset`, a container's
    cpuset) where the platform reports one, else every core; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)
