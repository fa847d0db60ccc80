"""A throwaway single-node Slurm cluster on localhost for tests: munged, slurmctld and slurmd
(Debian's `munge` and `slurm-wlm`) started in the foreground from a temporary directory, with
their own munge key, socket, ports, spool and state, so nothing of the host's is touched.

`LocalSlurm.start()` returns once `sinfo` shows the node idle and sets SLURM_CONF in this
process's environment (sbatch, squeue, and the jobs themselves, inherit it). Anything missing
or failing raises `SlurmUnavailable` with the reason; the tests turn that into a skip.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

COMMANDS = ["munged", "slurmctld", "slurmd", "slurmstepd", "sbatch", "srun", "sinfo", "squeue",
            "scontrol", "scancel"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE"}


class SlurmUnavailable(Exception):
    pass


def _which(command: str) -> str | None:
    # The daemons live in /usr/sbin, often not on a user's PATH.
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin:/usr/local/sbin")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:  # all bound at once: n different ports
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class LocalSlurm:
    def __init__(self, cred_expire_s: int = 5):
        self.cred_expire_s = cred_expire_s  # also the delay before a requeued job restarts
        self.dir: Path | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self._saved_conf = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> LocalSlurm:
        missing = [c for c in COMMANDS if _which(c) is None]
        if missing:
            raise SlurmUnavailable(
                f"Slurm/munge not installed (missing {', '.join(missing)}); install with "
                "`apt-get install slurm-wlm munge`")
        # A short path: the munge socket's name must fit a sockaddr_un (108 bytes).
        self.dir = Path(tempfile.mkdtemp(prefix="slurm-test-", dir="/tmp"))
        try:
            self._start_munge()
            self._write_conf()
            self._saved_conf = os.environ.get("SLURM_CONF")
            os.environ["SLURM_CONF"] = str(self.conf)
            env = dict(os.environ)
            conf = str(self.conf)
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", conf], env)
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node, "-f", conf], env)
            self._wait_idle(timeout=60)
            # A job step end to end: credentials, slurmstepd, running as this user.
            try:
                out = subprocess.run(["srun", "--time=1", "true"], capture_output=True,
                                     text=True, timeout=60)
            except subprocess.TimeoutExpired:
                raise SlurmUnavailable("the local Slurm cluster cannot run a job: `srun true` "
                                       f"hung for 60 s; slurmd log: {self._tail('slurmd.log')}"
                                       ) from None
            if out.returncode:
                raise SlurmUnavailable("the local Slurm cluster cannot run a job: `srun true`: "
                                       f"{out.stderr.strip()[-300:]}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            ids = self._run(["squeue", "-h", "-o", "%i"], check=False).stdout.split()
            if ids:
                self._run(["scancel", *ids], check=False)
                deadline = time.time() + 20
                while time.time() < deadline and self._run(
                        ["squeue", "-h", "-o", "%i"], check=False).stdout.strip():
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._kill_leftovers()
        if self._saved_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = self._saved_conf
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _kill_leftovers(self) -> None:
        """SIGKILL what this cluster started and left behind (job steps whose slurmstepd
        lost its slurmd): the processes whose environment names this cluster's slurm.conf
        (slurmd's children and the jobs inherit it), never this process or its parents."""
        if self.dir is None:
            return
        marker = f"SLURM_CONF={self.conf}".encode()
        keep, pid = set(), os.getpid()
        while pid > 1:
            keep.add(pid)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                break
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in keep:
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except OSError:
                    pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- setup -----------------------------------------------------------------------------

    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    @property
    def node(self) -> str:
        return socket.gethostname().split(".")[0]

    def _spawn(self, name: str, cmd: list[str], env: dict) -> None:
        log = open(self.dir / "log" / f"{name}.out", "w")  # noqa: SIM115 (kept by the child)
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.dir, start_new_session=True)
        log.close()

    def _start_munge(self) -> None:
        munge = self.dir / "munge"
        munge.mkdir(mode=0o700)
        (self.dir / "log").mkdir()
        (self.dir / "run").mkdir(mode=0o755)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = self.dir / "run" / "munge.sock"
        self._spawn("munged", [_which("munged"), "-F", "-f", f"--key-file={key}",
                               f"--socket={self.munge_socket}", f"--pid-file={munge}/munged.pid",
                               f"--log-file={self.dir}/log/munged.log",
                               f"--seed-file={munge}/munged.seed"], dict(os.environ))
        deadline = time.time() + 20
        while not self.munge_socket.exists():
            if self.procs["munged"].poll() is not None or time.time() > deadline:
                raise SlurmUnavailable(f"munged did not start: {self._tail('munged.out')}")
            time.sleep(0.1)

    def _write_conf(self) -> None:
        d, user = self.dir, getpass.getuser()
        for sub in ("spool", "state"):
            (d / sub).mkdir()
        host = self.node
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(f"""\
ClusterName=pytest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire_s}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
ReturnToService=2
JobRequeue=1
PreemptType=preempt/none
KillWait=1
MinJobAge=600
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited with code {proc.returncode}: "
                                           f"{self._tail(name + '.out')}")
            out = self._run(["sinfo", "-h", "-N", "-o", "%t"], check=False)
            state = out.stdout.strip() or out.stderr.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"the Slurm node did not become idle within {timeout:.0f}s "
                               f"(sinfo: {state!r}); slurmd log: {self._tail('slurmd.log')}")

    # ---- queries ---------------------------------------------------------------------------

    def _tail(self, name: str, lines: int = 3) -> str:
        path = self.dir / "log" / name
        if not path.is_file():
            return "(no log)"
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((self.dir / "log").iterdir()))

    def _run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if check and out.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
        return out

    def jobs(self, job_id: str) -> dict[str, dict[str, str]]:
        """`scontrol show job` records of a job or of every task of an array, by job id
        (`<array>_<index>` for array tasks; a pending array's unstarted tasks may be one
        record, keyed by its `<array>_[a-b]` id)."""
        out = self._run(["scontrol", "-o", "show", "job", job_id.split("_")[0]], check=False)
        records = {}
        for line in out.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "ArrayTaskId" in fields:
                key = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
                if "-" in fields["ArrayTaskId"] or "," in fields["ArrayTaskId"]:
                    key = f"{fields['ArrayJobId']}_[{fields['ArrayTaskId']}]"
            else:
                key = fields.get("JobId", "?")
            records[key] = fields
        return records

    def wait(self, job_ids: list[str], timeout: float) -> dict[str, dict[str, str]]:
        """Block until every job is in a terminal state; its `scontrol` record per id."""
        deadline = time.time() + timeout
        while True:
            records = self.jobs(job_ids[0])
            for job_id in job_ids[1:]:
                records.update(self.jobs(job_id))
            mine = {j: records.get(j) for j in job_ids}
            if all(r is not None and r.get("JobState") in TERMINAL for r in mine.values()):
                return mine
            if time.time() > deadline:
                states = {j: (r or {}).get("JobState") for j, r in mine.items()}
                raise AssertionError(f"jobs not finished after {timeout:.0f}s: {states}\n"
                                     f"{self.logs()}")
            time.sleep(0.5)
