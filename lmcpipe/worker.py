"""A process that imports lmcpipe's dependencies once and runs commands for many jobs.

Each step of a study is a Snakemake job that starts the ``lmcpipe`` command.
Importing JAX, Flax, Optax, POT, scikit-learn and scikit-dimension takes 1 to
3 s on a small CPU, longer than most steps of a small study compute. During a
local run the workflow starts one worker, which imports them once and then,
for each ``lmcpipe`` command that connects to it, forks a child that runs the
command with the caller's arguments, working folder, environment and standard
streams. The caller waits and exits with the child's status, so Snakemake
gets the same outputs, log and exit status as without the worker.

Python's ``multiprocessing`` forkserver does the same for the processes of
one program; the jobs here are independent processes started by Snakemake,
hence this module.

Safety rules:

* The worker never initialises a JAX backend or compiles anything, so no
  XLA thread exists when it forks. Each child starts its own backend (and
  its own GPU context), like a fresh process.
* A child takes the caller's working folder, environment, umask and time
  zone. A request from a process with another niceness or other resource
  limits (``ulimit``) is rejected.
* Values read at import time cannot change in a child. So a request is
  rejected when its environment differs from the worker's in such a
  variable (``JAX_*``, ``XLA_*``, ``CUDA_*``, ``PYTHON*``, ...), or when it
  comes from another Python installation or another copy of lmcpipe. The
  command then runs in its own process as usual.
* When the caller dies (Snakemake cancels the job), the worker kills the
  child. When the worker dies, the kernel kills its children
  (``PR_SET_PDEATHSIG``) and their callers fail, so a job is never reported
  done or failed while its step still runs.
* The worker stops when the process that started it (Snakemake) exits.

Protocol, over a Unix socket in a private temporary folder: the caller sends
its standard stream descriptors with a request (``argv``, ``cwd``, ``env``,
``prefix``, ``package``, ``umask``, ``nice``, ``limits``). The worker replies
``{"accepted": pid}`` then ``{"exit": status, "message": text}``, or
``{"rejected": reason}``. Each message is length-prefixed marshal data
(:func:`lmcpipe.client.encode`).

The caller side is :mod:`lmcpipe.client`. Python's start-up with the ``site``
module cost a caller 55 ms on the benchmark machine (10 ms with ``-S``), as
long as a small step computes. So while a worker serves a Snakemake run, the
jobs' ``lmcpipe`` is a script in the worker's folder that starts Python with
``-S`` (:meth:`Worker.publish`).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import select
import signal
import socket
import sys
import time

from lmcpipe import client
from lmcpipe.client import ADDRESS_ENV_VAR

# Environment variables that modules read when they are imported: a child
# inherits the worker's values, so requests must carry the same ones.
IMPORT_TIME_PREFIXES = (
    "JAX_", "XLA_", "TF_", "TPU_", "CUDA_", "NVIDIA_", "ROCR_", "HIP_", "PYTHON",
    "OMP_", "OPENBLAS_", "MKL_", "KMP_", "LD_", "POT_", "SKLEARN_", "SCIPY_",
    "NUMPY_", "ARROW_", "MPL",
)

# Thread counts of the BLAS and OpenMP libraries, which Snakemake sets to each
# job's threads. The libraries read them when loaded, so a child applies them
# with threadpoolctl instead.
THREAD_COUNT_VARS = {
    "OMP_NUM_THREADS": "openmp",
    "OPENBLAS_NUM_THREADS": "blas",
    "MKL_NUM_THREADS": "blas",
}


# Modules a step may import; each is imported by the worker once. Steps
# import some of them only when they run (the digits loader, Parquet
# datasets, the JAX modules of lowering and of stored programs). The first
# group has the modules of training, which the first jobs of a study run.
# The worker serves requests once it has them, and imports the second group
# between requests.
PRELOAD_FIRST = (
    "numpy", "pyarrow.parquet", "pyarrow.pandas_compat", "jax", "jax.numpy",
    "jax.experimental.serialize_executable", "jaxlib.mlir.dialects.mhlo", "flax.linen", "optax",
    "sklearn", "sklearn.datasets", "sklearn.model_selection",
    # The command line's parser takes option choices from lmcpipe.dimension
    # and lmcpipe.convergence.
    "lmcpipe.cli", "lmcpipe.dimension", "lmcpipe.convergence", "lmcpipe.data", "lmcpipe.training",
)
PRELOAD_LATER = (
    "scipy.optimize", "scipy.stats", "pyarrow.dataset", "skdim", "ot",
    "lmcpipe.neurons", "lmcpipe.statistics", "lmcpipe.alignment", "lmcpipe.wasserstein",
    "lmcpipe.barriers", "lmcpipe.aggregate", "lmcpipe.theory", "lmcpipe.plots",
)
PRELOAD = PRELOAD_FIRST + PRELOAD_LATER

# The worker's command. `python -c` puts the working folder first on sys.path,
# and the command drops it: the worker must import the lmcpipe that the
# `lmcpipe` command imports, not a checkout that happens to be the workflow's
# folder, because requests from another copy are rejected.
# Once the worker has stopped, it exits without Python's teardown of its
# many modules (about 0.1 s), which Snakemake would wait for at the end of a run.
_WORKER_MAIN = (
    "import os, sys; del sys.path[0]; "
    "from lmcpipe.worker import main; status = main(sys.argv[1:]); "
    "sys.stdout.flush(); sys.stderr.flush(); os._exit(status)"
)
_MAX_REQUEST = 16 * 1024 * 1024
# threadpoolctl's view of the BLAS and OpenMP libraries, taken by the worker
# once it has imported every module (see _limit_threads).
_THREADPOOLS = None
_PR_SET_PDEATHSIG = 1
_FOLDER_PREFIX = "lmcpipe-worker-"


# Worker side ---------------------------------------------------------------


class _Log:
    """One line per event, written to the worker's log file (not the logging module,
    whose root handlers a child configures for itself)."""

    def __init__(self, stream):
        self.stream = stream

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.stream.write(f"{stamp} worker {os.getpid()}: {message}\n")
        self.stream.flush()


def serve(address: str, parent: int | None = None, log_stream=None) -> None:
    """Accept requests on the Unix socket ``address`` until stopped.

    Args:
        address: path of the socket to create.
        parent: pid of the process to outlive no longer (Snakemake).
        log_stream: text stream for one line per event (default: stderr).
    """
    _Server(address, parent, _Log(log_stream or sys.stderr)).run()


@dataclasses.dataclass
class _Child:
    """A forked child and the caller it reports to (None once the caller has gone)."""

    connection: socket.socket | None
    started: float
    argv: list
    kill_at: float | None = None
    message: str = ""


@dataclasses.dataclass
class _Pending:
    """A connection whose request has not fully arrived."""

    data: bytes = b""
    fds: list = dataclasses.field(default_factory=list)
    deadline: float = 0.0


class _Server:
    """The worker's single-threaded loop: no thread exists when it forks."""

    def __init__(self, address: str, parent: int | None, log):
        self.address = address
        self.parent = parent
        self.log = log
        self.children: dict[int, _Child] = {}
        self.pending: dict[socket.socket, _Pending] = {}
        self.stopping: list[str] = []
        self.later = list(PRELOAD_LATER)
        self.later_started: float | None = None
        # Why forking has become unsafe, if it has. Requests are then rejected.
        self.unsafe_reason: str | None = None

    def run(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.address)
        os.chmod(self.address, 0o600)
        listener.listen(64)
        listener.setblocking(False)
        try:
            # Bound before the imports: callers that connect meanwhile wait in the
            # backlog. Some modules set variables while they are imported, so
            # requests are compared with the environment the imports saw.
            self.environment = dict(os.environ)
            self.state = client.process_state()
            # Until the loop takes over, SIGTERM ends the imports at once and
            # still removes the socket (see _shut_down).
            signal.signal(signal.SIGTERM, _exit_on_signal)
            self._preload(PRELOAD_FIRST)
            self._loop(listener)
        finally:
            self._shut_down(listener)

    def _preload(self, names: tuple[str, ...]) -> None:
        started = time.perf_counter()
        import importlib

        for name in names:
            importlib.import_module(name)
        # Children parse their command lines with this parser (4 ms to build).
        from lmcpipe.cli import build_parser

        build_parser()
        self._imported(f"imported {len(names)} modules in {time.perf_counter() - started:.2f} s; "
                       f"serving on {self.address}")

    def _imported(self, message: str) -> None:
        """Check that no JAX backend started, freeze the imported objects and log ``message``."""
        if _backend_started():
            raise RuntimeError("a JAX backend started while importing; forking would be unsafe")
        # Children then leave the imported objects to the worker's permanent
        # generation: their garbage collections do not touch (and copy) those pages.
        gc.freeze()
        self.log(message)

    def _preload_one(self) -> None:
        """Import the next module of the second group.

        Commands already run in children by then, so a failure here stops the
        preloading and leaves them running. A child imports what the worker
        lacks, as a command without the worker would.
        """
        import importlib

        if self.later_started is None:
            self.later_started = time.perf_counter()
        name = self.later.pop(0)
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - any import error: log it and serve on
            self.later.clear()
            gc.freeze()
            self.log(f"importing {name} failed ({type(error).__name__}: {error}); "
                     "serving without the modules not imported yet")
            return
        if _backend_started():
            self.later.clear()
            self.unsafe_reason = f"a JAX backend started while the worker imported {name}"
            self.log(f"{self.unsafe_reason}; new requests are rejected and run in "
                     "their own processes")
            return
        if not self.later:
            # A child applies Snakemake's thread counts with threadpoolctl
            # (_limit_threads). Finding the loaded libraries costs 4 ms (about
            # 20 ms the first time), so the worker does it once for all children.
            global _THREADPOOLS
            from threadpoolctl import ThreadpoolController

            _THREADPOOLS = ThreadpoolController()
            self._imported(f"imported {len(PRELOAD_LATER)} more modules in "
                           f"{time.perf_counter() - self.later_started:.2f} s")

    def _loop(self, listener) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.append("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self.stopping.append("SIGINT"))
        # A child's exit wakes the loop at once through this pipe, instead of at
        # the next timeout.
        wakeup, wakeup_writer = os.pipe()
        os.set_blocking(wakeup, False)
        os.set_blocking(wakeup_writer, False)
        signal.set_wakeup_fd(wakeup_writer)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        while not self.stopping:
            if self.parent is not None and os.getppid() != self.parent:
                self.log("the process that started the worker exited; stopping")
                self.stopping.append("Snakemake exited")
                break
            callers = [child.connection for child in self.children.values()
                       if child.connection is not None and child.kill_at is None]
            watched = [listener, wakeup, *self.pending, *callers]
            try:
                readable, _, _ = select.select(watched, [], [], 0 if self.later else 0.5)
            except InterruptedError:
                continue
            for ready in readable:
                if ready == wakeup:
                    _drain(wakeup)
                elif ready is listener:
                    self._accept(listener)
                elif ready in self.pending:
                    self._read_request(ready)
                else:
                    self._check_caller(ready)
            self._expire_pending()
            self._reap()
            if self.later and not self.pending and not self.stopping:
                self._preload_one()

    def _accept(self, listener) -> None:
        try:
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        connection.setblocking(False)
        self.pending[connection] = _Pending(deadline=time.monotonic() + 10)

    def _read_request(self, connection) -> None:
        """Read what has arrived of a request; start its command once complete."""
        entry = self.pending[connection]
        try:
            data, fds, _, _ = socket.recv_fds(connection, 65536, 3)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._drop(connection, f"dropped a request: {error}")
            return
        entry.fds.extend(fds)
        if not data and not fds:
            self._drop(connection, "dropped a request: the caller closed the connection")
            return

        entry.data += data
        if len(entry.data) < client.HEADER_SIZE:
            return
        size = int.from_bytes(entry.data[:client.HEADER_SIZE], "big")
        if size > _MAX_REQUEST:
            self._drop(connection, f"dropped a request of {size} bytes")
            return
        if len(entry.data) < client.HEADER_SIZE + size:
            return

        del self.pending[connection]
        try:
            request = client.decode(entry.data[client.HEADER_SIZE:client.HEADER_SIZE + size])
            if request is None:
                raise ValueError("invalid request: not the marshal encoding of a dict")
            if len(entry.fds) != 3:
                raise ValueError(f"a request must carry 3 stream descriptors, got {len(entry.fds)}")
            self._start(connection, request, entry.fds)
        except (OSError, ValueError) as error:
            self.log(f"dropped a request: {error}")
            connection.close()
        finally:
            for fd in entry.fds:
                os.close(fd)

    def _drop(self, connection, message: str) -> None:
        entry = self.pending.pop(connection)
        for fd in entry.fds:
            os.close(fd)
        connection.close()
        self.log(message)

    def _expire_pending(self) -> None:
        now = time.monotonic()
        for connection, entry in list(self.pending.items()):
            if now > entry.deadline:
                self._drop(connection, "dropped a request that did not arrive within 10 s")

    def _start(self, connection, request: dict, fds: list[int]) -> None:
        reason = self.unsafe_reason or _rejection_reason(request, self.environment, self.state)
        command = " ".join(map(str, request.get("argv", []))) if isinstance(request, dict) else ""
        connection.setblocking(True)
        if reason:
            self.log(f"rejected lmcpipe {command}: {reason}")
            _send(connection, {"rejected": reason})
            connection.close()
            return

        sys.stdout.flush()
        sys.stderr.flush()
        # Signals stay blocked across the fork until the child has reset the
        # worker's handlers, so a SIGTERM sent to a new child cannot be lost.
        blocked = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            pid = os.fork()
            if pid == 0:
                _run_child(request, fds, worker=os.getppid(), mask=previous)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

        child = _Child(connection, time.perf_counter(), request["argv"])
        self.children[pid] = child
        self.log(f"pid {pid}: lmcpipe {command} (in {request['cwd']})")
        try:
            _send(connection, {"accepted": pid})
        except OSError:
            # The caller died while its request waited: its job has failed, so
            # the command must not run on behind Snakemake's back.
            self.log(f"pid {pid}: caller gone before the start, stopping it")
            connection.close()
            child.connection = None
            child.kill_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)

    def _check_caller(self, connection) -> None:
        """Stop the child of a caller whose socket has closed (it became readable with no data)."""
        for pid, child in self.children.items():
            if child.connection is connection:
                try:
                    data = connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if not data:
                    self.log(f"pid {pid}: caller gone, stopping lmcpipe {' '.join(child.argv)}")
                    self._kill(pid)
                return

    def _kill(self, pid: int, message: str = "") -> None:
        """Ask a child to stop; :meth:`_reap` kills it if it still runs 5 s later."""
        child = self.children[pid]
        child.kill_at = time.monotonic() + 5
        child.message = message
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        """Report each finished child's exit status to its caller."""
        for pid, child in list(self.children.items()):
            try:
                done, raw = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, raw = pid, 1 << 8
            if not done:
                if child.kill_at is not None and time.monotonic() > child.kill_at:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                continue
            status = os.waitstatus_to_exitcode(raw)
            if status < 0:  # killed by a signal: report it as a shell does
                status = 128 - status
            del self.children[pid]
            self.log(f"pid {pid}: exit {status} after {time.perf_counter() - child.started:.2f} s")
            if child.connection is None:
                continue
            try:
                _send(child.connection, {"exit": status, "message": child.message})
            except OSError:
                pass
            child.connection.close()

    def _shut_down(self, listener) -> None:
        reason = self.stopping[0] if self.stopping else "an error"
        for pid in list(self.children):
            self._kill(pid, f"the worker stopped ({reason}) and ended this command")
        while self.children:
            self._reap()
            time.sleep(0.05)
        for connection in list(self.pending):
            self._drop(connection, "dropped a request: the worker is stopping")
        listener.close()
        try:
            os.unlink(self.address)
        except OSError:
            pass
        # The private folder made by start(), left behind when Snakemake was killed.
        folder = os.path.dirname(os.path.abspath(self.address))
        if os.path.basename(folder).startswith(_FOLDER_PREFIX):
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        self.log("stopped")


def _backend_started() -> bool:
    """Return whether this process has started a JAX backend (and with it XLA's threads)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def _exit_on_signal(number, frame) -> None:
    raise SystemExit(128 + number)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _rejection_reason(request: dict, environment: dict, state: dict | None = None) -> str | None:
    """Return why the request cannot run in a child of this worker, or None."""
    if not isinstance(request, dict):
        return "malformed request"
    # marshal carries any value: check each type that the code below and the
    # child rely on.
    argv, env = request.get("argv"), request.get("env")
    if not isinstance(argv, list) or not all(isinstance(word, str) for word in argv):
        return "malformed request"
    if not isinstance(env, dict) or not all(
            isinstance(name, str) and isinstance(value, str) for name, value in env.items()):
        return "malformed request"
    # A process can inherit an entry such as "=x", which os.environ reads as
    # the name "" but cannot set in the child.
    if any(not name or "=" in name for name in env):
        return "environment has a variable with an empty name or one with '='"
    if not isinstance(request.get("cwd"), str) or not isinstance(request.get("umask"), int):
        return "malformed request"
    if request.get("prefix") != sys.prefix:
        return f"another Python installation ({request.get('prefix')})"
    if request.get("package") != client.package_folder():
        return f"another copy of lmcpipe ({request.get('package')})"

    env = request["env"]
    for name in THREAD_COUNT_VARS:
        if not env.get(name, "1").strip().isdigit():
            return f"{name}={env[name]!r} is not a whole number"
    names = {
        name for name in (*env, *environment)
        if name.startswith(IMPORT_TIME_PREFIXES) and name not in THREAD_COUNT_VARS
    }
    differing = sorted(name for name in names if env.get(name) != environment.get(name))
    if differing:
        return "environment differs in variables read at import: " + ", ".join(differing)

    state = state or client.process_state()
    if request.get("nice") != state["nice"]:
        return f"niceness {request.get('nice')} differs from the worker's {state['nice']}"
    if request.get("limits") != state["limits"]:
        limits = request.get("limits") if isinstance(request.get("limits"), dict) else {}
        names = sorted(str(name) for name in {*limits, *state["limits"]}
                       if limits.get(name) != state["limits"].get(name))
        return "resource limits differ: " + (", ".join(names) or "malformed")
    return None


def _send(connection, message: dict) -> None:
    connection.sendall(client.encode(message))


def _run_child(request: dict, fds: list[int], worker: int, mask) -> None:
    """Run the request's command in this forked child and exit with its status."""
    status = 1
    try:
        _die_with(worker)
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        # The inherited sockets (listener, other callers) must close here, or a
        # caller's exit would go unnoticed while this child keeps its socket open.
        os.closerange(3, 1 << 16)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        time.tzset()
        sys.argv = ["lmcpipe", *request["argv"]]
        limits = _limit_threads(request["env"])  # noqa: F841 - holds the limits until exit
        from lmcpipe.cli import main

        status = main(request["argv"])
    except SystemExit as exit_:
        if isinstance(exit_.code, int) or exit_.code is None:
            status = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            status = 1
    except BaseException:  # noqa: BLE001 - report anything, then exit with 1
        import traceback

        traceback.print_exc()
        status = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)


def _limit_threads(env: dict):
    """Apply the request's BLAS and OpenMP thread counts to the loaded libraries."""
    limits = {}
    for name, api in THREAD_COUNT_VARS.items():
        if name in env:
            limits[api] = min(limits.get(api, 1 << 30), max(int(env[name]), 1))
    if not limits:
        return None
    if _THREADPOOLS is not None:
        return _THREADPOOLS.limit(limits=limits)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=limits)


def _die_with(parent: int, number: int = signal.SIGKILL) -> None:
    """Have the kernel send signal ``number`` to this process when ``parent`` dies (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, number, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


# Starting and stopping from the workflow -----------------------------------


class Worker:
    """A running worker started by :func:`start`."""

    def __init__(self, process, address: str, folder: str):
        self.process = process
        self.address = address
        self.folder = folder
        # The folder of the jobs' `lmcpipe` script, while it is first on $PATH.
        self.command_folder: str | None = None

    def running(self) -> bool:
        return self.process.poll() is None

    def publish(self, jobs_command: bool = True) -> None:
        """Set ``$LMCPIPE_WORKER``, so that commands started from this process after the call use the worker.

        With ``jobs_command``, the worker's own ``lmcpipe`` script
        (:func:`_write_jobs_command`) also goes first on ``$PATH``, when the
        ``lmcpipe`` there is this Python's. Jobs that run in a software
        environment of their own (Snakemake's conda, Apptainer or environment
        modules) must keep theirs, so the workflow passes False for them.
        """
        os.environ[ADDRESS_ENV_VAR] = self.address
        if jobs_command and self.command_folder is None and os.environ.get("PATH"):
            self.command_folder = _write_jobs_command(self.folder)
            if self.command_folder is not None:
                os.environ["PATH"] = os.pathsep.join([self.command_folder, os.environ["PATH"]])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker, remove its folder and undo :meth:`publish`."""
        import shutil
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if os.environ.get(ADDRESS_ENV_VAR) == self.address:
            del os.environ[ADDRESS_ENV_VAR]
        if self.command_folder is not None:
            entries = os.environ.get("PATH", "").split(os.pathsep)
            if self.command_folder in entries:
                entries.remove(self.command_folder)
                os.environ["PATH"] = os.pathsep.join(entries)
            self.command_folder = None
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_jobs_command(folder: str) -> str | None:
    """Write the jobs' ``lmcpipe`` script into ``folder/bin``; return that folder, or None.

    The script starts this Python with ``-S``, without the ``site`` module,
    and calls :func:`lmcpipe.client.forward`. When the worker cannot take a
    command, ``forward`` runs this Python's own ``lmcpipe`` script instead.
    So the script is written only when that is the ``lmcpipe`` on ``$PATH``:
    then a job runs the same lmcpipe with or without it.
    """
    import shutil
    import sysconfig

    found = shutil.which("lmcpipe")
    own = [os.path.join(sysconfig.get_path("scripts", scheme), "lmcpipe")
           for scheme in (sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user"))]
    if found is None or not any(os.path.isfile(path) and os.path.samefile(found, path) for path in own):
        return None
    # Linux before 5.1 reads at most 127 bytes of a "#!" line, and the
    # interpreter's path ends at the first white space. Python then reads
    # that line as source, which must be UTF-8.
    shebang = os.fsencode(f"#!{sys.executable} -S")
    if not sys.executable or len(shebang) > 127 or any(char.isspace() for char in sys.executable):
        return None
    try:
        shebang.decode("utf-8")
    except UnicodeDecodeError:
        return None
    command_folder = os.path.join(folder, "bin")
    os.makedirs(command_folder, exist_ok=True)
    path = os.path.join(command_folder, "lmcpipe")
    # ascii() writes the paths as escapes, so the script reads the same in
    # any locale and for paths that are not UTF-8.
    body = (
        "# The lmcpipe command of one Snakemake run's jobs (lmcpipe.worker).\n"
        "import sys\n"
        f"sys.path.append({ascii(os.path.dirname(client.package_folder()))})\n"
        "from lmcpipe.client import forward\n"
        f"sys.exit(forward({ascii(os.path.abspath(found))}, prefix={ascii(sys.prefix)}))\n"
    )
    with open(path, "wb") as script:
        script.write(shebang + b"\n" + body.encode("ascii"))
    os.chmod(path, 0o755)
    return command_folder


def start(log_path: str | os.PathLike, timeout: float = 30.0, publish: bool = True) -> Worker | None:
    """Start a worker for this process's ``lmcpipe`` commands.

    The worker imports its modules in the background; commands that connect
    meanwhile wait for it. It stops when this process exits.

    Args:
        log_path: file the worker appends its log to.
        timeout: seconds to wait for the worker's socket.
        publish: set ``$LMCPIPE_WORKER`` (see :meth:`Worker.publish`) at once.

    Returns:
        The worker, or None when it did not come up within ``timeout``
        seconds (the commands then run in their own processes).
    """
    import subprocess
    import tempfile

    folder = tempfile.mkdtemp(prefix=_FOLDER_PREFIX)
    address = os.path.join(folder, "socket")
    log_path = os.fspath(log_path)
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    # Appended to, so that an earlier run's failure stays readable.
    with open(log_path, "a") as log_file:
        log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} starting a worker for "
                       f"process {os.getpid()}\n")
        log_file.flush()
        process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_MAIN, address, "--parent", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = Worker(process, address, folder)
    deadline = time.monotonic() + timeout
    while not os.path.exists(address):
        if process.poll() is not None or time.monotonic() > deadline:
            worker.stop()
            return None
        time.sleep(0.02)
    if publish:
        worker.publish()
    return worker


# The module whose timers WorkflowWorker.finish cancels.
_SNAKEMAKE_SCHEDULER_MODULE = "snakemake.scheduling.job_scheduler"


class WorkflowWorker:
    """The worker of one Snakemake run (see workflow/Snakefile).

    :meth:`prestart` starts it while Snakemake parses the workflow, when the
    command line plainly runs jobs here. :meth:`serve` (from ``onstart``)
    starts one if none runs and publishes it to the jobs. :meth:`stop` ends it.
    """

    def __init__(self, log_path: str | os.PathLike):
        self.log_path = log_path
        self.worker: Worker | None = None

    def prestart(self, argv: list[str], config: dict) -> None:
        """Start the worker when ``argv`` plainly runs jobs here and ``config`` requests one.

        The config is read before lmcpipe checks it, so anything but a
        mapping with ``worker`` unset or true means no early start.
        """
        runtime = config.get("runtime", {})
        requested = isinstance(runtime, dict) and runtime.get("worker", True) is True
        if self.worker is None and requested and command_runs_jobs(argv):
            self.worker = start(self.log_path, publish=False)

    def serve(self, jobs_command: bool = True) -> None:
        """Publish a running worker to the jobs (see :meth:`Worker.publish` for ``jobs_command``)."""
        if self.worker is not None and not self.worker.running():
            self.stop()
        if self.worker is None:
            self.worker = start(self.log_path, publish=False)
        if self.worker is not None:
            self.worker.publish(jobs_command)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def finish(self) -> None:
        """End the run (``onsuccess``, ``onerror``): stop the worker and Snakemake's rescheduling timers.

        Each pass of Snakemake's scheduling loop that has ready jobs starts a
        ``threading.Timer``, even when it starts no job. The timer wakes the
        scheduler again after the timespan of ``--max-jobs-per-timespan``, 1 s
        by default (``JobScheduler.schedule`` in Snakemake 9.27). The last
        pass (the target rule ``all``) leaves one behind, and Python waits for
        it before exiting, so every run ended about 1 s after its last job.
        Snakemake calls onsuccess and onerror after its scheduling loop has
        returned, so no rescheduling is due: those timers, and only those, are
        cancelled.
        """
        import threading

        self.stop()
        for thread in threading.enumerate():
            function = getattr(thread, "function", None)
            if (isinstance(thread, threading.Timer)
                    and getattr(function, "__module__", None) == _SNAKEMAKE_SCHEDULER_MODULE):
                thread.cancel()


# Options of a ``snakemake`` command line that runs the workflow's jobs on
# this machine: the values of options and the targets are the other words.
# Anything else (--dry-run, --lint, --report, --executor, --profile, ...)
# may run no job here.
_RUN_LONG_OPTIONS = frozenset({
    "--cores", "--jobs", "--local-cores", "--configfile", "--configfiles", "--config",
    "--directory", "--snakefile", "--forceall", "--forcerun", "--forcetargets", "--force",
    "--until", "--omit-from", "--printshellcmds", "--quiet", "--reason", "--keep-going",
    "--rerun-incomplete", "--ri", "--rerun-triggers", "--resources", "--res", "--set-threads",
    "--set-resources", "--default-resources", "--latency-wait", "--show-failed-logs",
    "--nolock", "--verbose", "--retries", "--max-threads", "--keep-incomplete", "--notemp",
    "--nt", "--nocolor", "--allowed-rules", "--scheduler",
})
_RUN_SHORT_FLAGS = frozenset("FfpqrkT")
_RUN_SHORT_WITH_VALUE = frozenset("cjCdsRUO")


def command_runs_jobs(argv: list[str], environ: dict | None = None) -> bool:
    """Return whether the ``snakemake`` command line ``argv`` plainly runs jobs on this machine.

    Snakemake learns whether it runs anything (a dry run, a lint, another
    executor) only after it has parsed the workflow, while the workflow
    wants to start its worker during the parse (see workflow/Snakefile).
    False means "not sure": the workflow then waits for ``onstart``.

    NOTE: options set in a profile are not seen. A profile's ``dry-run:
    true`` starts a worker that only ends with Snakemake, after 2 to 3 s of
    imports in the background and a line in its log.
    """
    environ = os.environ if environ is None else environ
    if environ.get("SNAKEMAKE_PROFILE") or not argv:
        return False
    # Snakemake's own command line: its script, or `python -m snakemake`.
    # Under Snakemake's Python API, argv is the calling program's.
    program = os.path.normpath(argv[0])
    if os.path.basename(program) != "snakemake" and not program.endswith(
            os.path.join("snakemake", "__main__.py")):
        return False
    for word in argv[1:]:
        if word == "--":
            return False
        if word.startswith("--"):
            if word.split("=", 1)[0] not in _RUN_LONG_OPTIONS:
                return False
        elif word.startswith("-") and len(word) > 1:
            letters = word[1:]
            if letters[0] in _RUN_SHORT_WITH_VALUE:
                continue  # -c, -j4, ...: the rest is the value
            if not set(letters) <= _RUN_SHORT_FLAGS:
                return False
    return True


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m lmcpipe.worker",
        description="Serve lmcpipe commands from one process that has imported their "
        "dependencies (started by the workflow; see lmcpipe.worker).",
    )
    parser.add_argument("address", help="path of the Unix socket to create")
    parser.add_argument("--parent", type=int, help="stop when this process exits")
    args = parser.parse_args(argv)
    if args.parent is not None:
        # Stop even while importing when Snakemake exits without stopping the
        # worker (a run with nothing to do, an error while planning).
        _die_with(args.parent, signal.SIGTERM)
    serve(args.address, args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
