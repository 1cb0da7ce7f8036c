"""`launch`: detectron2's launcher, plus multi-process training on machines without CUDA.

detectron2 v0.6's `launch` asserts CUDA in every worker and uses NCCL, so `--num-gpus 2` on a
CPU machine fails with "cuda is not available", and its `create_ddp_model` passes
`device_ids=[local rank]`, which DistributedDataParallel refuses for a CPU module. Here, when
torch sees no CUDA, `--num-gpus N` starts N processes on the CPU with the gloo backend (each
with CPU cores // N threads), and `Trainer` wraps the model in a CPU DistributedDataParallel.
With CUDA, detectron2's own `launch` runs unchanged. Multi-machine options are detectron2's:
`--num-machines`, `--machine-rank`, `--dist-url` (tcp://<host of rank 0>:<port>).

The CPU processes never outlive the launcher: each gets SIGTERM from the kernel when the
launcher dies, even by SIGKILL (`die_with_parent`), and a SIGTERM or SIGINT to the launcher
terminates them (then kills what is left after a grace period) before it exits.
"""

import os
import signal
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm

from ..system import die_with_parent, usable_cpus

__all__ = ["launch"]

DEFAULT_TIMEOUT = timedelta(minutes=30)


def launch(
    main_func,
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url=None,
    args=(),
    timeout: timedelta = DEFAULT_TIMEOUT,
):
    """Run `main_func(*args)` in `num_processes_per_machine` processes on each machine.

    With CUDA this is detectron2's `launch` (one process per GPU, NCCL). Without CUDA and more
    than one process in all, the processes run on the CPU and talk through gloo.

    Args:
        main_func: called as `main_func(*args)` in every process.
        num_processes_per_machine (int): GPUs per machine, or processes per machine on the CPU.
        num_machines (int), machine_rank (int), dist_url (str): as detectron2's `launch`
            ("auto": a free port on localhost, single machine only).
        args (tuple): arguments of `main_func`.
        timeout (timedelta): of the process group.
    """
    world_size = num_machines * num_processes_per_machine
    if torch.cuda.is_available() or world_size == 1:
        return detectron2_launch(
            main_func,
            num_processes_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise ValueError("--dist-url auto works on one machine only; give tcp://host:port")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    # printed, as detectron2's command line: logging is set up in the processes only
    print(f"No CUDA: {num_processes_per_machine} CPU processes (gloo) on this machine")
    context = mp.start_processes(
        _cpu_worker,
        nprocs=num_processes_per_machine,
        args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args)
        + (timeout, os.getpid()),
        daemon=False,
        start_method="spawn",
        join=False,
    )
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        while not context.join():
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(context.processes)


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def _stop(processes, grace_s: float = 10.0) -> None:
    """SIGTERM the processes still alive, SIGKILL those alive after `grace_s`."""
    alive = [p for p in processes if p.is_alive()]
    for p in alive:
        p.terminate()
    deadline = time.time() + grace_s
    for p in alive:
        p.join(max(0.0, deadline - time.time()))
        if p.is_alive():
            p.kill()
            p.join()


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _create_local_process_group(num_per_machine: int, machine_rank: int) -> None:
    """The process group of the processes on this machine, which detectron2's `comm` needs
    (`get_local_rank`, `get_local_size`): detectron2 main has `create_local_process_group`;
    v0.6 sets `comm._LOCAL_PROCESS_GROUP` in its own launcher, which is done here likewise."""
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_per_machine)
        return
    world_size = dist.get_world_size()
    for i in range(world_size // num_per_machine):
        group = dist.new_group(list(range(i * num_per_machine, (i + 1) * num_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def _cpu_worker(
    local_rank,
    main_func,
    world_size,
    num_per_machine,
    machine_rank,
    dist_url,
    args,
    timeout,
    launcher_pid,
):
    die_with_parent(launcher_pid)
    torch.set_num_threads(max(1, usable_cpus() // num_per_machine))
    rank = machine_rank * num_per_machine + local_rank
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
    )
    _create_local_process_group(num_per_machine, machine_rank)
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
