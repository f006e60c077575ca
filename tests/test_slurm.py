"""Run the tiny study through SLURM on a single-node cluster started by the test.

The cluster comes from Debian's packages (``apt-get install slurmctld slurmd
slurm-client munge``, which ``.ci/run`` does). It needs root, because munged,
slurmctld and slurmd run as root. The SLURM commands inside a job read
``/etc/slurm/slurm.conf``, since the executor plugin clears ``SLURM_*``
variables, ``SLURM_CONF`` included. So the test writes that file and
``gres.conf`` beside it, and restores what was there before when it ends.
Every daemon listens on 127.0.0.1 only. There is no slurmdbd, so ``sacct``
fails and the plugin polls job states with ``squeue``. That works because
``MinJobAge`` keeps finished jobs visible to ``squeue`` for 300 s.

The node declares two GPUs backed by empty files, so the ``gpu: 1`` request of
the ``train`` rule is scheduled without a real GPU, and both training jobs run
at once. slurmd logs that the files are not devices. Both runs compute on this
machine's CPU, so the tables of both runs must be equal.
"""

import fcntl
import importlib.util
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
SLURM_PROFILE = ROOT / "workflow" / "profiles" / "slurm"
TABLES = ["barriers", "curves", "dimensions", "histories", "alignments", "correlations"]
# Columns that hold wall-clock measurements, which differ between any two runs.
TIMING_COLUMNS = {"alignments": ["seconds"]}

SLURM_ETC = Path("/etc/slurm")
DAEMONS = ["munged", "slurmctld", "slurmd"]
CLIENTS = ["sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun"]
INSTALL_HINT = "apt-get install slurmctld slurmd slurm-client munge"
# The profile's largest memory request: the train rule's mem_mb. The node offers
# enough for both train jobs of the tiny study, and leaves the rest to the system.
TRAIN_MEM_MB = 8000
NODE_MEMORY_MB = 2 * TRAIN_MEM_MB
RESERVED_MEMORY_MB = 1024

LOCAL_TIMEOUT_S = 180
SLURM_TIMEOUT_S = 240
DAEMON_START_TIMEOUT_S = 30

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]


def find_program(name: str) -> str | None:
    # Daemons live in /usr/sbin, which is not on every root PATH.
    search_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=search_path)


def running_daemons() -> dict[str, int]:
    """Return the process ids of SLURM daemons that already run on this machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if name in ("slurmctld", "slurmd"):
            found[name] = int(entry.name)
    return found


def skip_reason() -> str | None:
    """Return why this machine cannot run the test, or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"the SLURM test needs Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "the SLURM test must run as root: it starts munged, slurmctld and slurmd"
    # The executor plugin calls the client commands through PATH.
    missing = [name for name in DAEMONS if find_program(name) is None]
    missing += [name for name in CLIENTS if shutil.which(name) is None]
    if missing:
        return (f"SLURM or munge is not installed ({', '.join(missing)} not found); "
                f"run: {INSTALL_HINT}")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed; run: pip install -e '.[slurm]'"
    hostname = socket.gethostname()
    try:
        address = socket.gethostbyname(hostname)
    except OSError as error:
        return f"hostname {hostname!r} does not resolve ({error})"
    if not ipaddress.ip_address(address).is_loopback:
        return (f"hostname {hostname!r} resolves to {address}, not to a loopback address, "
                "so slurmctld would listen on a network interface")
    running = running_daemons()
    if running:
        listing = ", ".join(f"{name} (pid {pid})" for name, pid in running.items())
        return f"a SLURM cluster already runs on this machine: {listing}; the test leaves it alone"
    if memory_mb() < NODE_MEMORY_MB + RESERVED_MEMORY_MB:
        return (f"the SLURM test needs {NODE_MEMORY_MB + RESERVED_MEMORY_MB} MB of memory for two "
                f"train jobs of {TRAIN_MEM_MB} MB, this machine has {memory_mb()} MB")
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("MemTotal is missing from /proc/meminfo")


def slurm_conf(state: Path, munge_socket: Path, node: str, ports: dict[str, int], memory: int,
               gpu_files: list[Path]) -> str:
    """Return a slurm.conf for one node that runs every daemon on loopback."""
    node_line = (f"NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory} "
                 f"Gres=gpu:{len(gpu_files)} State=UNKNOWN")
    return f"""\
# Single-node test cluster written by lmcpipe's tests/test_slurm.py.
ClusterName=lmcpipetest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports['slurmctld']}
SlurmdPort={ports['slurmd']}
# Bind slurmctld, slurmd and srun to the address of the hostname (loopback,
# checked by the test) instead of every interface.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={state / 'slurmctld'}
SlurmdSpoolDir={state / 'slurmd'}
SlurmctldPidFile={state / 'slurmctld.pid'}
SlurmdPidFile={state / 'slurmd.pid'}
SlurmctldLogFile={state / 'log' / 'slurmctld.log'}
SlurmdLogFile={state / 'log' / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# Finished jobs stay visible to squeue and scontrol for this many seconds.
MinJobAge=300
ReturnToService=2
{node_line}
PartitionName=main Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def gres_conf(node: str, gpu_files: list[Path]) -> str:
    lines = [f"NodeName={node} Name=gpu File={path}" for path in gpu_files]
    return "\n".join(lines) + "\n"


def log_tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return f"{path}: missing"
    text = path.read_text(errors="replace").splitlines()
    return f"--- {path} (last {lines} lines)\n" + "\n".join(text[-lines:])


def stop_process(process: subprocess.Popen) -> None:
    """Stop one daemon started by this test: SIGTERM, then SIGKILL after 15 s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


def wait_for(check, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def run_quietly(command: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


class EtcSlurmFiles:
    """Write files into /etc/slurm and put back what was there before."""

    def __init__(self, backup_dir: Path):
        self.backup_dir = backup_dir
        self.saved: dict[Path, Path | None] = {}

    def write(self, name: str, text: str) -> None:
        target = SLURM_ETC / name
        if target not in self.saved:
            if target.exists():
                backup = self.backup_dir / name
                shutil.copy2(target, backup)
                self.saved[target] = backup
            else:
                self.saved[target] = None
        SLURM_ETC.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def restore(self) -> None:
        for target, backup in self.saved.items():
            if backup is None:
                target.unlink(missing_ok=True)
            else:
                shutil.copy2(backup, target)


def job_environment() -> dict[str, str]:
    """Return the environment for Snakemake, with this interpreter's scripts first on PATH."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SLURM_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class SnakemakeRun:
    """One Snakemake process in its own process group, logging to its working directory."""

    def __init__(self, workdir: Path, *args: str):
        command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE),
                   "--directory", str(workdir), *args]
        self.log_path = workdir / "snakemake-test.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env=job_environment(), start_new_session=True)

    def wait(self, timeout: float) -> int | None:
        """Return the exit code, or None after killing the process group on timeout."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            return None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def new_study(workdir: Path) -> Path:
    (workdir / "config").mkdir(parents=True)
    shutil.copy(ROOT / ".test" / "config.yaml", workdir / "config" / "config.yaml")
    return workdir


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Start munged, slurmctld and slurmd for one node, and stop them at the end."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)

    lock_file = open(Path(tempfile.gettempdir()) / "lmcpipe-slurm-test.lock", "w")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        pytest.skip("another run of the SLURM test holds its lock and owns /etc/slurm/slurm.conf")

    state = tmp_path_factory.mktemp("slurm")
    for name in ["munge", "slurmctld", "slurmd", "log", "backup"]:
        (state / name).mkdir()
    # munged rejects a socket path unless every user may enter each folder on
    # it, which pytest's private temporary folders do not allow.
    socket_dir = Path(tempfile.mkdtemp(prefix="lmcpipe-munge-"))
    socket_dir.chmod(0o755)
    socket_path = socket_dir / "munge.socket.2"
    key = state / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    gpu_files = [state / f"gpu{index}" for index in range(2)]
    for path in gpu_files:
        path.touch()

    node = socket.gethostname().split(".")[0]
    ports = {"slurmctld": free_port(), "slurmd": free_port()}
    etc_files = EtcSlurmFiles(state / "backup")
    daemons: list[subprocess.Popen] = []
    try:
        conf = slurm_conf(state, socket_path, node, ports, NODE_MEMORY_MB, gpu_files)
        etc_files.write("slurm.conf", conf)
        etc_files.write("gres.conf", gres_conf(node, gpu_files))
        munged = [find_program("munged"), "--foreground", f"--key-file={key}",
                  f"--socket={socket_path}", f"--pid-file={state / 'munge' / 'munged.pid'}",
                  f"--seed-file={state / 'munge' / 'munged.seed'}",
                  f"--log-file={state / 'log' / 'munged.log'}"]
        with open(state / "log" / "munged.out", "w") as output:
            daemons.append(subprocess.Popen(munged, stdout=output, stderr=subprocess.STDOUT))
        if not wait_for(socket_path.exists, DAEMON_START_TIMEOUT_S):
            pytest.fail(f"munged did not create its socket {socket_path}\n"
                        + log_tail(state / "log" / "munged.out"))

        for daemon in ["slurmctld", "slurmd"]:
            with open(state / "log" / f"{daemon}.out", "w") as output:
                daemons.append(subprocess.Popen([find_program(daemon), "-D"], stdout=output,
                                                stderr=subprocess.STDOUT))

        def node_is_idle():
            if any(process.poll() is not None for process in daemons):
                return True
            result = run_quietly(["sinfo", "--noheader", "--format=%T", "--nodes", node])
            return result.returncode == 0 and result.stdout.strip() == "idle"

        wait_for(node_is_idle, DAEMON_START_TIMEOUT_S)
        state_now = run_quietly(["sinfo", "--noheader", "--format=%T", "--nodes", node])
        if state_now.stdout.strip() != "idle":
            logs = "\n".join(log_tail(state / "log" / f"{name}.{ext}")
                             for name in ["slurmctld", "slurmd"] for ext in ["log", "out"])
            pytest.fail(f"the SLURM node {node} is not idle after {DAEMON_START_TIMEOUT_S} s "
                        f"(sinfo: {state_now.stdout.strip() or state_now.stderr.strip()})\n{logs}")
        yield {"node": node, "state": state}
    finally:
        if len(daemons) == 3 and all(process.poll() is None for process in daemons):
            # Cancel what a failed or timed-out run left, so no slurmstepd outlives slurmd.
            run_quietly(["scancel", "--partition=main"])

            def no_job_runs():
                active = run_quietly(["squeue", "--noheader", "--states=RUNNING,COMPLETING"])
                return active.stdout.strip() == ""

            wait_for(no_job_runs, 30, interval=1)
        for process in reversed(daemons):
            stop_process(process)
        etc_files.restore()
        shutil.rmtree(socket_dir, ignore_errors=True)
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        lock_file.close()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """Start the tiny study with Snakemake's local executor, as the reference.

    It runs while the SLURM run waits for its jobs, which saves about a minute.
    """
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    workdir = new_study(tmp_path_factory.mktemp("local"))
    run = SnakemakeRun(workdir, "--cores", "2")
    yield workdir, run
    run.wait(timeout=0)


@pytest.fixture(scope="module")
def slurm_study(tmp_path_factory, local_run, cluster):
    """The tiny study run through SLURM with the workflow's SLURM profile."""
    workdir = new_study(tmp_path_factory.mktemp("cluster"))
    run = SnakemakeRun(
        workdir,
        "--executor", "slurm", "--workflow-profile", str(SLURM_PROFILE),
        # Without slurmdbd, sacct fails and only squeue reports job states.
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-keep-successful-logs",
    )
    returncode = run.wait(SLURM_TIMEOUT_S)
    if returncode != 0:
        queue = run_quietly(["squeue", "--states=all"]).stdout
        status = "timed out" if returncode is None else f"exited with {returncode}"
        pytest.fail(f"SLURM run {status} (limit {SLURM_TIMEOUT_S} s)\n{run.output()[-4000:]}\n"
                    f"squeue:\n{queue}\n{log_tail(cluster['state'] / 'log' / 'slurmctld.log')}")
    return workdir


@pytest.fixture(scope="module")
def local_study(local_run):
    """The finished reference run."""
    workdir, run = local_run
    returncode = run.wait(LOCAL_TIMEOUT_S)
    status = "timed out" if returncode is None else f"exited with {returncode}"
    assert returncode == 0, (f"local run {status} (limit {LOCAL_TIMEOUT_S} s)\n"
                             f"{run.output()[-4000:]}")
    return workdir


def slurm_jobs(workdir: Path) -> list[dict[str, str]]:
    """Return the jobs that slurmctld still keeps and that ran in workdir, as dicts of fields."""
    result = run_quietly(["scontrol", "--oneliner", "show", "job"])
    assert result.returncode == 0, result.stderr
    jobs = []
    for line in result.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields and Path(fields.get("WorkDir", "")).resolve() == workdir.resolve():
            jobs.append(fields)
    return jobs


def is_train_job(job: dict[str, str]) -> bool:
    # The plugin names each job's rule and wildcards in the SLURM comment.
    return job.get("Comment", "").startswith("rule_train_")


def read_table(workdir: Path, name: str) -> pd.DataFrame:
    table = pd.read_parquet(workdir / "results" / "tables" / f"{name}.parquet")
    return table.drop(columns=TIMING_COLUMNS.get(name, []))


@pytest.mark.parametrize("name", TABLES)
def test_slurm_tables_equal_local(slurm_study, local_study, name):
    local = read_table(local_study, name)
    remote = read_table(slurm_study, name)
    assert list(remote.columns) == list(local.columns)
    assert len(remote) == len(local)
    pd.testing.assert_frame_equal(remote, local, check_exact=True)


def test_train_jobs_request_gpu(slurm_study):
    jobs = slurm_jobs(slurm_study)
    train = [job for job in jobs if is_train_job(job)]
    assert len(train) == 2, [job.get("Comment") for job in jobs]
    for job in train:
        assert job["JobState"] == "COMPLETED", job
        assert "gpu:1" in job.get("TresPerJob", ""), job


def test_cpu_jobs_request_no_gpu(slurm_study):
    others = [job for job in slurm_jobs(slurm_study) if not is_train_job(job)]
    assert others
    for job in others:
        assert job["JobState"] == "COMPLETED", job
        assert "gpu" not in job.get("TresPerJob", "") + job.get("TresPerNode", ""), job


def test_extract_jobs_share_one_slurm_job(slurm_study):
    comments = [job.get("Comment", "") for job in slurm_jobs(slurm_study)]
    assert comments.count("rule_neurons_extract") == 1, comments
    assert not any(comment.startswith("rule_extract") for comment in comments), comments
    neurons = list((slurm_study / "results" / "runs").glob("*/*/*/*/seed*/neurons.parquet"))
    assert len(neurons) == 4


def test_jobs_disable_jax_preallocation(slurm_study):
    jobs = slurm_jobs(slurm_study)
    assert jobs
    for job in jobs:
        script = run_quietly(["scontrol", "write", "batch_script", job["JobId"], "-"])
        assert script.returncode == 0, script.stderr
        assert "export XLA_PYTHON_CLIENT_PREALLOCATE=false" in script.stdout, job.get("Comment")
