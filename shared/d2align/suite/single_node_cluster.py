"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd from Debian's
packages, started without systemd in a temporary folder and stopped afterwards.

    cluster = SlurmCluster(tmp_path)     # the packages are installed (as root) if missing
    cluster.start()                      # about 2 s once installed
    os.environ.update(cluster.env)       # SLURM_CONF for sbatch / squeue / scontrol / submitit
    ...
    cluster.stop()                       # cancels every job, stops the daemons

The daemons run in their own sessions with stdin from /dev/null and their output in files,
so that none of them holds the test runner's stdout. There is no accounting database:
`MinJobAge` keeps finished jobs visible to `scontrol` / `squeue -t all` for an hour, which is
what `d2align.suite.slurm` falls back to when `sacct` cannot answer. `KillWait=5` (a cancelled
job's processes get SIGKILL 5 s after SIGTERM), `cred_expire=10` and short scheduler intervals
make a requeued job start again in seconds instead of minutes.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["SlurmCluster", "slurm_unavailable"]

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
PROGRAMS = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo"]
PORTS = (6817, 6818)  # slurmctld, slurmd


def _missing_programs() -> List[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def slurm_unavailable() -> Optional[str]:
    """Install SLURM from Debian's packages if it is missing; returns why it cannot run here,
    or None when it can."""
    if not _missing_programs():
        return _ports_taken()
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return (
            f"SLURM is not installed ({', '.join(_missing_programs())} missing) and this is not "
            "a root shell with apt-get: install " + " ".join(PACKAGES)
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + PACKAGES
    result = subprocess.run(install, env=env, capture_output=True, text=True)
    if result.returncode != 0:  # an old package index: refresh it once
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return f"apt-get install {' '.join(PACKAGES)} failed:\n{result.stderr[-2000:]}"
    return _ports_taken()


def _ports_taken() -> Optional[str]:
    for port in PORTS:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return f"port {port} is taken (another slurmctld / slurmd runs on this machine)"
    return None


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """One node (this machine, all its CPUs) in one partition `debug`, root as SlurmUser."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.procs: Dict[str, subprocess.Popen] = {}
        self.host = socket.gethostname().split(".")[0]

    @property
    def conf(self) -> Path:
        return self.folder / "slurm.conf"

    @property
    def env(self) -> Dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _node_line(self) -> str:
        out = subprocess.run(
            [_sbin("slurmd"), "-C"], capture_output=True, text=True, check=True
        ).stdout
        line = next(ln for ln in out.splitlines() if ln.startswith("NodeName="))
        fields = [f for f in line.split() if not f.startswith(("NodeName=", "RealMemory="))]
        # a little less memory than the machine reports, so that the node is never drained
        # for having less than configured
        memory = int(line.split("RealMemory=")[1].split()[0]) * 9 // 10
        return f"NodeName={self.host} NodeAddr=127.0.0.1 {' '.join(fields)} RealMemory={memory}"

    def _write_config(self) -> None:
        d = self.folder
        for sub in ("state", "spool", "log", "munge"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d / "munge", 0o700)
        key = d / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            os.chmod(key, 0o400)
        lines = [
            "ClusterName=d2aligntest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={d / 'munge' / 'munge.socket'},cred_expire=10",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
            f"SlurmctldPort={PORTS[0]}",
            f"SlurmdPort={PORTS[1]}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=3600",
            "KillWait=5",
            "SchedulerParameters=bf_interval=1,sched_interval=2",
            self._node_line() + " State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, cmd: List[str]) -> None:
        log = open(self.folder / "log" / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, **self.env),
        )
        log.close()

    def start(self, timeout_s: float = 60.0) -> "SlurmCluster":
        self._write_config()
        m = self.folder / "munge"
        self._spawn(
            "munged",
            [
                _sbin("munged"),
                "--foreground",
                "--force",
                f"--socket={m / 'munge.socket'}",
                f"--key-file={m / 'munge.key'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--seed-file={m / 'munged.seed'}",
                f"--log-file={self.folder / 'log' / 'munged.log'}",
            ],
        )
        self._wait(lambda: (m / "munge.socket").exists(), timeout_s, "munged's socket")
        self._spawn("slurmctld", [_sbin("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [_sbin("slurmd"), "-D", "-f", str(self.conf)])
        self._wait(self._node_idle, timeout_s, "the node to be idle in sinfo")
        return self

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            check=check,
            env=dict(os.environ, **self.env),
            timeout=60,
        )

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.split()
        return "idle" in out

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.time() + timeout_s
        while not ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.logs()}")
            if time.time() > deadline:
                raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")
            time.sleep(0.2)

    def logs(self, lines: int = 15) -> str:
        parts = []
        for path in sorted((self.folder / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def jobs(self) -> List[str]:
        """`JobId State` of every job SLURM still has (finished ones included)."""
        out = self.run("squeue", "-h", "-t", "all", "-o", "%i %T", check=False).stdout
        return [ln.strip() for ln in out.splitlines() if ln.strip()]

    def active_jobs(self) -> List[str]:
        out = self.run("squeue", "-h", "-o", "%i %T", check=False).stdout
        return [ln.strip() for ln in out.splitlines() if ln.strip()]

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "-u", "root", check=False)
            deadline = time.time() + 30
            while self.active_jobs() and time.time() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
