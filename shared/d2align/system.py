"""What the machine lets this process use, and how concurrent runs share it."""

import ctypes
import os
import signal
import sys
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = [
    "usable_cpus",
    "usable_cpu_set",
    "visible_gpus",
    "job_slots",
    "die_with_parent",
]

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Have the kernel send `sig` to this process when its parent dies (Linux; elsewhere a
    no-op), and exit at once if the parent `parent_pid` is already gone (it may die between
    the fork and this call)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent_pid:
        os._exit(128 + int(sig))


def usable_cpus() -> int:
    """The CPU cores this process may run on: its affinity set (`taskset`, a container's
    cpuset) where the platform reports one, else every core; at least 1."""
    return len(usable_cpu_set())


def usable_cpu_set() -> List[int]:
    """The ids of the cores of `usable_cpus`, sorted (0 .. n-1 without an affinity API)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        cpus = list(range(os.cpu_count() or 1))
    return cpus or [0]


def visible_gpus() -> List[str]:
    """The CUDA devices this process may use, as `CUDA_VISIBLE_DEVICES` entries: that
    variable's list where it is set, else 0 .. torch.cuda.device_count() - 1 (none without
    CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _share(items: Sequence, slot: int, slots: int) -> list:
    """Slot `slot` of `slots`' share of `items`: a contiguous block of len // slots items when
    there are at least as many items as slots, else one item, round robin."""
    if not items:
        return []
    if len(items) < slots:
        return [items[slot % len(items)]]
    size = len(items) // slots
    return list(items[slot * size : (slot + 1) * size])


def job_slots(
    jobs: int, cpus: Sequence[int], gpus: Sequence[str]
) -> List[Tuple[Dict[str, str], Optional[List[int]]]]:
    """How `jobs` concurrent runs share the machine: per slot, the environment variables of
    its process and the cores it is pinned to.

    Each slot gets its block of the cores (OMP_NUM_THREADS / MKL_NUM_THREADS = its size, and
    the affinity) and its block of the GPUs (CUDA_VISIBLE_DEVICES), so that N runs on a
    machine with N GPUs never share one; with fewer GPUs than runs, runs share GPUs round robin.

    Args:
        jobs: runs at once, >= 1.
        cpus: usable core ids (`usable_cpu_set`).
        gpus: visible GPUs (`visible_gpus`); empty: CUDA_VISIBLE_DEVICES is left alone.

    Returns:
        list of `jobs` (env, cores) pairs.
    """
    slots = []
    for slot in range(jobs):
        cores = _share(cpus, slot, jobs)
        env = {"OMP_NUM_THREADS": str(len(cores)), "MKL_NUM_THREADS": str(len(cores))}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(_share(gpus, slot, jobs))
        slots.append((env, cores))
    return slots
