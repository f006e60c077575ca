"""The worker that runs ``lmcpipe`` commands in forked children (lmcpipe.worker)."""

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from lmcpipe import client
from lmcpipe import worker as worker_module
from lmcpipe.cli import main

BOUNDS = ["bounds", "--epsilon", "0.1", "--input-dim", "64"]
# A training run long enough to be stopped halfway.
LONG_TRAIN = [
    "train", "--spec",
    '{"dataset": "digits", "depth": 1, "width": 256, "lr": 0.01, "epochs": 3000, '
    '"batch_size": 32, "warmup_steps": 10}',
    "--seeds", "0", "--checkpoint-every", "1000",
]


def start_worker(log_path):
    """Start a worker and return ``(worker, address)``, leaving this process's environment as it was."""
    saved = os.environ.get(worker_module.ADDRESS_ENV_VAR)
    worker = worker_module.start(log_path)
    assert worker is not None, log_path.read_text()
    address = os.environ.pop(worker_module.ADDRESS_ENV_VAR)
    if saved is not None:
        os.environ[worker_module.ADDRESS_ENV_VAR] = saved
    return worker, address


@pytest.fixture(scope="module")
def running_worker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("worker")
    worker, address = start_worker(folder / "worker.log")
    yield worker, address, folder / "worker.log"
    worker.stop()


def lmcpipe(args, address, cwd, extra_env=None, **kwargs):
    env = {**os.environ, worker_module.ADDRESS_ENV_VAR: address, **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "lmcpipe", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, **kwargs)


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def served(log_path, command):
    """Return the pids of the worker's children that ran ``lmcpipe COMMAND``."""
    return [int(pid) for pid in re.findall(rf"pid (\d+): lmcpipe {command}\b", log_path.read_text())]


def test_command_runs_in_worker_with_callers_streams(running_worker, tmp_path):
    _, address, log_path = running_worker
    result = lmcpipe([*BOUNDS, "--out", "bounds.parquet"], address, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bounds: finished" in result.stderr
    # The output is relative to the caller's folder, and the same as in a process of its own.
    assert (tmp_path / "bounds.parquet").exists()
    alone = subprocess.run([sys.executable, "-m", "lmcpipe", *BOUNDS], capture_output=True,
                           text=True, env={k: v for k, v in os.environ.items()
                                           if k != worker_module.ADDRESS_ENV_VAR})
    assert result.stdout.strip()
    assert result.stdout == alone.stdout
    assert served(log_path, "bounds")


def test_exit_status_and_error_come_back(running_worker, tmp_path):
    _, address, log_path = running_worker
    before = len(served(log_path, "extract"))
    result = lmcpipe(["extract", "missing.npz", "--out", "x.parquet"], address, tmp_path)
    assert result.returncode == 2
    assert "lmcpipe extract: error: missing.npz" in result.stderr
    assert len(served(log_path, "extract")) == before + 1


def test_request_with_other_import_time_environment_runs_alone(running_worker, tmp_path):
    _, address, log_path = running_worker
    result = lmcpipe(BOUNDS, address, tmp_path, {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"})
    assert result.returncode == 0, result.stderr
    assert "differs in variables read at import: XLA_FLAGS" in log_path.read_text()


def test_without_a_worker_the_command_runs_alone(tmp_path):
    result = lmcpipe(BOUNDS, str(tmp_path / "no-socket"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ε" in result.stdout or "epsilon" in result.stdout


def test_python_calls_never_use_the_worker(running_worker, monkeypatch, capsys):
    monkeypatch.setenv(worker_module.ADDRESS_ENV_VAR, running_worker[1])
    calls = []
    monkeypatch.setattr(client, "run_in_worker", lambda argv: calls.append(argv))
    monkeypatch.setattr(sys, "argv", ["lmcpipe", *BOUNDS])
    assert main(BOUNDS) == 0
    assert main() == 0
    assert calls == []


def test_caller_killed_stops_the_child(running_worker, tmp_path):
    _, address, log_path = running_worker
    env = {**os.environ, worker_module.ADDRESS_ENV_VAR: address}
    caller = subprocess.Popen([sys.executable, "-m", "lmcpipe", *LONG_TRAIN, "--out-dir", "run"],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    assert wait_for(lambda: served(log_path, "train")), log_path.read_text()
    child = served(log_path, "train")[-1]
    caller.kill()
    caller.wait()
    assert wait_for(lambda: f"pid {child}: caller gone" in log_path.read_text(), 20)
    assert wait_for(lambda: not Path(f"/proc/{child}").exists(), 20)
    assert re.search(rf"pid {child}: exit {128 + signal.SIGTERM}", log_path.read_text())


def test_worker_death_kills_child(tmp_path):
    worker, address = start_worker(tmp_path / "worker.log")
    try:
        env = {**os.environ, worker_module.ADDRESS_ENV_VAR: address}
        caller = subprocess.Popen([sys.executable, "-m", "lmcpipe", *LONG_TRAIN, "--out-dir", "run"],
                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        log_path = tmp_path / "worker.log"
        assert wait_for(lambda: served(log_path, "train")), log_path.read_text()
        child = served(log_path, "train")[-1]
        worker.process.kill()
        _, stderr = caller.communicate(timeout=60)
        assert caller.returncode == 1
        assert "stopped before it finished" in stderr
        # The step never runs on behind the caller's back.
        assert wait_for(lambda: not Path(f"/proc/{child}").exists() or
                        Path(f"/proc/{child}/stat").read_text().split()[2] == "Z", 20)
    finally:
        worker.stop()


def test_worker_stops_when_its_parent_exits(tmp_path):
    address = tmp_path / "socket"
    parent = subprocess.Popen([
        sys.executable, "-c",
        "import os, subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-m', 'lmcpipe.worker', {str(address)!r}, "
        "'--parent', str(os.getpid())], start_new_session=True); time.sleep(2)",
    ])
    assert wait_for(address.exists, 30)
    parent.wait(timeout=60)
    # The socket goes once the worker has noticed that its parent is gone.
    assert wait_for(lambda: not address.exists(), 60)


def test_worker_ignores_checkout_in_cwd(tmp_path, monkeypatch):
    # A workflow run from a checkout while lmcpipe is installed elsewhere: the
    # worker must import what the `lmcpipe` command imports.
    checkout = tmp_path / "checkout"
    (checkout / "lmcpipe").mkdir(parents=True)
    (checkout / "lmcpipe" / "__init__.py").write_text("raise ImportError('the checkout copy')\n")
    monkeypatch.chdir(checkout)
    worker, address = start_worker(tmp_path / "worker.log")
    try:
        result = lmcpipe(BOUNDS, address, tmp_path)
        assert result.returncode == 0, result.stderr
        assert served(tmp_path / "worker.log", "bounds")
    finally:
        worker.stop()


def test_worker_stops_with_parent_during_imports(tmp_path):
    # The parent exits as soon as the socket is there, long before the
    # worker's imports end: the kernel's signal stops the worker at once.
    address = tmp_path / "socket"
    log = tmp_path / "worker.log"
    parent = subprocess.Popen([
        sys.executable, "-c",
        "import os, subprocess, sys, time; "
        f"log = open({str(log)!r}, 'w'); "
        f"worker = subprocess.Popen([sys.executable, '-m', 'lmcpipe.worker', {str(address)!r}, "
        "'--parent', str(os.getpid())], stdout=log, stderr=log, start_new_session=True); "
        f"print(worker.pid, flush=True); "
        f"[time.sleep(0.01) for _ in range(3000) if not os.path.exists({str(address)!r})]",
    ], stdout=subprocess.PIPE, text=True)
    worker_pid = int(parent.stdout.readline())
    parent.wait(timeout=60)
    assert wait_for(lambda: not Path(f"/proc/{worker_pid}").exists(), 30)
    assert not address.exists()
    assert "serving on" not in log.read_text()


@pytest.mark.parametrize("argv, runs", [
    (["snakemake", "--cores", "all"], True),
    (["snakemake"], True),
    (["snakemake", "-c2", "-pF", "all"], True),
    (["snakemake", "--cores=2", "--configfile", "config/paper.yaml", "--forceall"], True),
    (["snakemake", "-j", "4", "--until", "train", "--config", "dataset=digits"], True),
    (["snakemake", "-n"], False),
    (["snakemake", "--cores", "2", "--dry-run"], False),
    (["snakemake", "-np"], False),
    (["snakemake", "--lint"], False),
    (["snakemake", "--report", "report.html"], False),
    (["snakemake", "--executor", "slurm", "--jobs", "10"], False),
    (["snakemake", "--workflow-profile", "workflow/profiles/slurm"], False),
    (["snakemake", "--summary"], False),
    (["snakemake", "--touch"], False),
    (["snakemake", "-t"], False),
    (["snakemake", "--cores", "1", "--", "all"], False),
    (["/usr/lib/python3/site-packages/snakemake/__main__.py", "--cores", "2"], True),
    (["/home/user/.venv/bin/snakemake", "--cores", "2"], True),
    (["analysis.py"], False),
    (["/usr/bin/pytest", "-q"], False),
    ([], False),
])
def test_command_runs_jobs(argv, runs):
    assert worker_module.command_runs_jobs(argv, {}) is runs


def test_profile_in_environment_is_not_plainly_local():
    assert not worker_module.command_runs_jobs(["snakemake"], {"SNAKEMAKE_PROFILE": "slurm"})


def test_workflow_worker_publishes_only_when_served(tmp_path, monkeypatch):
    monkeypatch.delenv(worker_module.ADDRESS_ENV_VAR, raising=False)
    workflow_worker = worker_module.WorkflowWorker(tmp_path / "worker.log")
    for config in ({"runtime": "off"}, {"runtime": None}, {"runtime": {"worker": False}},
                   {"runtime": {"worker": "no"}}):
        workflow_worker.prestart(["snakemake", "--cores", "2"], config)
        assert workflow_worker.worker is None
    workflow_worker.prestart(["snakemake", "--cores", "2"], {})
    try:
        assert workflow_worker.worker is not None
        assert worker_module.ADDRESS_ENV_VAR not in os.environ
        started = workflow_worker.worker
        workflow_worker.serve()
        # The started worker is kept, not replaced.
        assert workflow_worker.worker is started
        assert os.environ[worker_module.ADDRESS_ENV_VAR] == started.address
    finally:
        workflow_worker.stop()
    assert worker_module.ADDRESS_ENV_VAR not in os.environ
    assert not Path(started.folder).exists()
    workflow_worker.prestart(["snakemake", "--dry-run"], {})
    assert workflow_worker.worker is None


def test_finish_cancels_only_schedulers_timers(tmp_path):
    import threading
    import types

    job_scheduler = pytest.importorskip("snakemake.scheduling.job_scheduler")

    # Snakemake's own method starts the timer; it needs only the scheduler's semaphore.
    before = set(threading.enumerate())
    scheduler = types.SimpleNamespace(_open_jobs=threading.Semaphore(0))
    job_scheduler.JobScheduler._schedule_reevalutation(scheduler, 60)
    [rescheduling] = [thread for thread in set(threading.enumerate()) - before
                      if isinstance(thread, threading.Timer)]
    other = threading.Timer(60, lambda: None)
    other.start()
    try:
        worker_module.WorkflowWorker(tmp_path / "worker.log").finish()
        rescheduling.join(5)
        assert not rescheduling.is_alive()
        assert other.is_alive()
    finally:
        other.cancel()


@pytest.mark.parametrize("controller", [False, True])
def test_thread_counts_apply_to_loaded_libraries(controller, monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numpy  # noqa: F401 - loads the BLAS library

    if controller:  # the worker's view of the libraries, taken once
        monkeypatch.setattr(worker_module, "_THREADPOOLS", threadpoolctl.ThreadpoolController())

    limiter = worker_module._limit_threads({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    try:
        blas = [pool for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(pool["num_threads"] == 1 for pool in blas)
    finally:
        limiter.restore_original_limits()
    assert worker_module._limit_threads({}) is None


def valid_request(environment):
    return {"argv": ["train"], "cwd": "/", "env": dict(environment), "prefix": sys.prefix,
            "package": client.package_folder(), **client.process_state()}


@pytest.mark.parametrize("change, reason", [
    ({"env": {"JAX_PLATFORMS": "cuda"}}, "JAX_PLATFORMS"),
    ({"env": {"OMP_NUM_THREADS": "two"}}, "not a whole number"),
    ({"prefix": "/elsewhere"}, "another Python installation"),
    ({"package": "/elsewhere/lmcpipe"}, "another copy of lmcpipe"),
    ({"argv": "train"}, "malformed"),
    ({"argv": ["train", 1]}, "malformed"),
    ({"env": {"OMP_NUM_THREADS": 4}}, "malformed"),
    ({"env": {7: "x"}}, "malformed"),
    ({"env": {"": "x"}}, "empty name"),
    ({"umask": "022"}, "malformed"),
    ({"limits": {1: [1, 1]}}, "resource limits differ"),
    ({"nice": 19}, "niceness 19"),
    ({"limits": {"RLIMIT_AS": [1, 1]}}, "resource limits differ"),
])
def test_rejection_reasons(change, reason):
    environment = {"PATH": "/bin"}
    request = valid_request(environment)
    assert worker_module._rejection_reason(request, environment) is None
    request = {**request, **change}
    if "env" in change:
        request["env"] = {**environment, **change["env"]}
    assert reason in worker_module._rejection_reason(request, environment)


def test_thread_counts_alone_pass():
    environment = {"PATH": "/bin"}
    request = valid_request(environment)
    request["env"].update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "LMCPIPE_WORKER": "/x"})
    assert worker_module._rejection_reason(request, environment) is None


def test_caller_killed_while_queued_leaves_worker_serving(tmp_path):
    """A caller that dies before its request starts: no crash, no orphan command."""
    worker, address = start_worker(tmp_path / "worker.log")
    try:
        # The worker is still importing, so this request waits in the backlog.
        caller = subprocess.Popen([sys.executable, "-m", "lmcpipe", *BOUNDS, "--out", "early.parquet"],
                                  cwd=tmp_path, env={**os.environ, worker_module.ADDRESS_ENV_VAR: address},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        caller.kill()
        caller.wait()
        log_path = tmp_path / "worker.log"
        assert wait_for(lambda: "serving on" in log_path.read_text())
        result = lmcpipe(BOUNDS, address, tmp_path)
        assert result.returncode == 0, result.stderr
        assert worker.process.poll() is None, log_path.read_text()
        time.sleep(1)
        assert not (tmp_path / "early.parquet").exists()
    finally:
        worker.stop()


def test_silent_connection_does_not_block_others(running_worker, tmp_path):
    import socket

    _, address, _ = running_worker
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(address)
    try:
        started = time.monotonic()
        result = lmcpipe(BOUNDS, address, tmp_path)
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 8
    finally:
        silent.close()


def test_closed_stdout_runs_alone(running_worker, tmp_path):
    _, address, log_path = running_worker
    before = len(served(log_path, "bounds"))
    env = {**os.environ, worker_module.ADDRESS_ENV_VAR: address}
    result = subprocess.run(f"{sys.executable} -m lmcpipe bounds --epsilon 0.1 --input-dim 64 "
                            f"--out closed.parquet >&-", shell=True, cwd=tmp_path, env=env,
                            capture_output=False, stderr=subprocess.PIPE, timeout=120)
    assert (tmp_path / "closed.parquet").exists(), result.stderr
    assert len(served(log_path, "bounds")) == before


def test_umask_reaches_the_child(running_worker, tmp_path):
    _, address, _ = running_worker
    env = {**os.environ, worker_module.ADDRESS_ENV_VAR: address}
    result = subprocess.run(f"umask 077; {sys.executable} -m lmcpipe bounds --epsilon 0.1 "
                            "--input-dim 64 --out sub/x.parquet", shell=True, cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "sub" / "x.parquet").stat().st_mode & 0o777 == 0o600


def test_steps_without_jax_record_numpy_backend(running_worker, tmp_path):
    import pyarrow.parquet as pq

    _, address, _ = running_worker
    result = lmcpipe([*BOUNDS, "--out", "b.parquet"], address, tmp_path)
    assert result.returncode == 0, result.stderr
    assert pq.read_schema(tmp_path / "b.parquet").metadata[b"lmcpipe.backend"] == b"numpy"


def test_first_group_has_what_training_imports(tmp_path):
    # The worker serves training once it has PRELOAD_FIRST: a train step must
    # not import a module of the second group, nor a package outside the first.
    script = f"""
import importlib, json, sys
from lmcpipe import worker
for name in worker.PRELOAD_FIRST:
    importlib.import_module(name)
before = set(sys.modules)
from lmcpipe.cli import main
status = main(["train", "--spec", '{{"dataset": "digits", "depth": 1, "width": 8, "lr": 0.1, '
               '"epochs": 1, "batch_size": 256, "warmup_steps": 1}}', "--seeds", "0", "1",
               "--out-dir", {str(tmp_path / "run")!r}])
print(json.dumps([status, sorted(set(sys.modules) - before)]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "LMCPIPE_COMPILATION_CACHE": ""})
    assert result.returncode == 0, result.stderr
    status, imported = __import__("json").loads(result.stdout.splitlines()[-1])
    assert status == 0
    first = {name.split(".")[0] for name in worker_module.PRELOAD_FIRST}
    # The standard library's modules are cheap and not preloaded.
    packages = {name.split(".")[0] for name in imported} - set(sys.stdlib_module_names)
    assert packages <= first
    assert not set(imported) & set(worker_module.PRELOAD_LATER)


def test_commands_run_during_later_imports(tmp_path):
    # A command that arrives before the worker has imported the second group
    # runs in a child that imports what it lacks.
    log_path = tmp_path / "worker.log"
    worker, address = start_worker(log_path)
    try:
        result = lmcpipe(BOUNDS + ["--out", str(tmp_path / "bounds.parquet")], address, tmp_path)
        assert result.returncode == 0, result.stderr
        assert wait_for(lambda: "more modules" in log_path.read_text())
        assert served(log_path, "bounds")
    finally:
        worker.stop()
    assert (tmp_path / "bounds.parquet").exists()


def test_client_imports_only_light_modules(tmp_path):
    # The caller runs before every command of a study, in a Python without the
    # site module (see Worker.publish). The shared worker may have started
    # before this process imported scikit-learn, which sets KMP_DUPLICATE_LIB_OK.
    worker, address = start_worker(tmp_path / "worker.log")
    script = (f"import sys; sys.path.append({os.path.dirname(client.package_folder())!r}); "
              "before = set(sys.modules); from lmcpipe import client; "
              f"status = client.run_in_worker({[*BOUNDS, '--out', 'light.parquet']!r}, {sys.prefix!r}); "
              "print(status, ' '.join(sorted(set(sys.modules) - before)))")
    try:
        result = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True,
                                text=True, cwd=tmp_path, timeout=120,
                                env={**os.environ, worker_module.ADDRESS_ENV_VAR: address})
    finally:
        worker.stop()
    status, *imported = result.stdout.split("\n")[-2].split()
    assert status == "0", result.stderr
    assert (tmp_path / "light.parquet").exists()
    # Built into the interpreter, C extensions of the standard library, and os.
    assert set(imported) - set(sys.builtin_module_names) <= {
        "lmcpipe", "lmcpipe.client", "__future__", "_socket", "_struct", "resource",
        "os", "os.path", "posixpath", "genericpath", "stat", "_stat", "_collections_abc"}


def test_publish_puts_jobs_command_first_on_path(tmp_path, monkeypatch):
    own = Path(sysconfig.get_path("scripts")) / "lmcpipe"
    if not own.is_file():
        pytest.skip(f"lmcpipe is not installed as a command of this Python ({own})")
    monkeypatch.delenv(worker_module.ADDRESS_ENV_VAR, raising=False)
    # Another Python's lmcpipe first on PATH: the jobs keep it.
    other = tmp_path / "other"
    other.mkdir()
    (other / "lmcpipe").write_text("#!/bin/sh\necho other lmcpipe\n")
    (other / "lmcpipe").chmod(0o755)
    path = os.pathsep.join([str(other), str(own.parent), os.environ["PATH"]])
    monkeypatch.setenv("PATH", path)
    worker = worker_module.start(tmp_path / "worker.log")
    assert worker is not None
    try:
        assert worker.command_folder is None
        assert os.environ["PATH"] == path
    finally:
        worker.stop()

    path = os.pathsep.join([str(own.parent), os.environ["PATH"]])
    monkeypatch.setenv("PATH", path)
    log_path = tmp_path / "worker.log"
    worker = worker_module.start(log_path)
    assert worker is not None
    try:
        command = shutil.which("lmcpipe")
        assert command == os.path.join(worker.command_folder, "lmcpipe")
        assert Path(command).read_text().startswith(f"#!{sys.executable} -S\n")
        result = subprocess.run(["lmcpipe", *BOUNDS], capture_output=True, text=True, cwd=tmp_path,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert served(log_path, "bounds")
        alone = subprocess.run([sys.executable, "-m", "lmcpipe", *BOUNDS], capture_output=True,
                               text=True, env={k: v for k, v in os.environ.items()
                                               if k != worker_module.ADDRESS_ENV_VAR})
        assert result.stdout == alone.stdout
        # A request the worker rejects runs through this Python's own lmcpipe.
        rejected = subprocess.run(["lmcpipe", *BOUNDS], capture_output=True, text=True,
                                  cwd=tmp_path, timeout=120,
                                  env={**os.environ, "XLA_FLAGS": "--xla_cpu_enable_fast_math=false"})
        assert rejected.returncode == 0, rejected.stderr
        assert rejected.stdout == alone.stdout
        assert log_path.read_text().count("rejected lmcpipe bounds") == 1
        failed = subprocess.run(["lmcpipe", "extract", "missing.npz", "--out", "x.parquet"],
                                capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert failed.returncode == 2
        assert "lmcpipe extract: error: missing.npz" in failed.stderr
    finally:
        worker.stop()
    assert os.environ["PATH"] == path
    assert not Path(worker.folder).exists()


def test_malformed_request_is_dropped(running_worker, tmp_path):
    import marshal
    import socket

    _, address, log_path = running_worker
    request = valid_request(os.environ)
    # marshal.loads raises SystemError for this code object, whose argument count is -1.
    code = bytearray(marshal.dumps(compile("x = 1", "f", "exec")))
    code[1:5] = (-1).to_bytes(4, "little", signed=True)
    bodies = (b"not marshal data", client.encode({"argv": ["bounds"]})[client.HEADER_SIZE:],
              bytes(code), marshal.dumps({**request, "env": {**request["env"], "OMP_NUM_THREADS": 4}}),
              marshal.dumps({**request, "env": {**request["env"], 7: "x"}}))
    for body in bodies:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(address)
            with open(os.devnull, "rb") as null:
                socket.send_fds(connection, [len(body).to_bytes(client.HEADER_SIZE, "big") + body],
                                [null.fileno()] * 3)
            assert client.read_message(connection) in (None, {"rejected": "malformed request"})
    assert "dropped a request: invalid request" in log_path.read_text()
    result = lmcpipe([*BOUNDS, "--out", "after.parquet"], address, tmp_path)
    assert result.returncode == 0, result.stderr
    assert served(log_path, "bounds")


def _serve_with_later_group(tmp_path, later, extra_env=None):
    """Start a worker whose second import group is ``later``; return ``(process, address, log)``."""
    address = str(tmp_path / "socket")
    log_path = tmp_path / "worker.log"
    script = ("import sys; from lmcpipe import worker; "
              f"worker.PRELOAD_LATER = {tuple(later)!r}; worker.serve(sys.argv[1])")
    env = {**os.environ, **(extra_env or {})}
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([sys.executable, "-c", script, address], stdout=log_file,
                                   stderr=subprocess.STDOUT, env=env)
    assert wait_for(lambda: "serving on" in log_path.read_text()), log_path.read_text()
    return process, address, log_path


def test_failed_later_import_keeps_serving(tmp_path):
    later = ["json", "lmcpipe_no_such_module"]
    process, address, log_path = _serve_with_later_group(tmp_path, later)
    try:
        assert wait_for(lambda: "importing lmcpipe_no_such_module failed" in log_path.read_text())
        result = lmcpipe(BOUNDS + ["--out", str(tmp_path / "bounds.parquet")], address, tmp_path)
        assert result.returncode == 0, result.stderr
        assert served(log_path, "bounds")
    finally:
        process.terminate()
        process.wait(30)


def test_backend_in_later_import_rejects_requests(tmp_path):
    # A module of the second group that starts a JAX backend makes forking
    # unsafe: later requests run in their own processes.
    (tmp_path / "starts_backend.py").write_text("import jax\njax.devices()\n")
    env = {"PYTHONPATH": str(tmp_path)}
    process, address, log_path = _serve_with_later_group(tmp_path, ["starts_backend"], env)
    try:
        assert wait_for(lambda: "new requests are rejected" in log_path.read_text())
        result = lmcpipe(BOUNDS + ["--out", str(tmp_path / "bounds.parquet")], address, tmp_path,
                         extra_env=env)
        assert result.returncode == 0, result.stderr
        assert "rejected lmcpipe bounds" in log_path.read_text()
        assert not served(log_path, "bounds")
    finally:
        process.terminate()
        process.wait(30)
