"""The ``lmcpipe`` command's entry point: hand the command to a worker, or run it here.

Each step of a study starts this command, so until the command has gone to a
worker, it imports only light modules of the standard library. When
``$LMCPIPE_WORKER`` names a running worker (:mod:`lmcpipe.worker`), the
command runs in a child of that process, which has imported the dependencies
already. Without a worker, or when the worker rejects the request, the
command runs in this process (:func:`lmcpipe.cli.main`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

ADDRESS_ENV_VAR = "LMCPIPE_WORKER"

# Resource limits (ulimit) that a request must share with the worker.
RESOURCE_LIMITS = (
    "RLIMIT_AS", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CPU", "RLIMIT_FSIZE",
    "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CORE",
)

# A request is its length as 4 bytes (network order), then JSON.
HEADER = struct.Struct("!I")


def main() -> int:
    """Run ``lmcpipe`` with the command line's arguments; return its exit status."""
    status = run_in_worker(sys.argv[1:])
    if status is not None:
        return status
    from lmcpipe.cli import main as run_here

    return run_here(sys.argv[1:])


def run_in_worker(argv: list[str]) -> int | None:
    """Run ``lmcpipe ARGV`` in the worker named by ``$LMCPIPE_WORKER``.

    Returns:
        The command's exit status, or None when no worker is set, the
        connection fails, or the worker rejected the request. The caller then
        runs the command itself.
    """
    address = os.environ.get(ADDRESS_ENV_VAR)
    if not address:
        return None
    try:
        # A closed standard stream would be replaced by the socket below.
        for fd in (0, 1, 2):
            os.fstat(fd)
        request = json.dumps({
            "argv": list(argv),
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "prefix": sys.prefix,
            "package": package_folder(),
            **process_state(),
        }).encode()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None
    with connection:
        try:
            connection.connect(address)
            socket.send_fds(connection, [HEADER.pack(len(request)) + request], [0, 1, 2])
        except OSError:
            return None
        reader = connection.makefile("r", encoding="utf-8")
        first = read_message(reader)
        if first is None or "rejected" in first:
            return None
        # From here on the step runs in the worker's child: never run it twice.
        try:
            last = read_message(reader)
        except KeyboardInterrupt:
            # The worker stops the child when this connection closes.
            return 128 + signal.SIGINT
        if last is None or "exit" not in last:
            print(f"lmcpipe: the worker running this command (pid {first.get('accepted')}) "
                  "stopped before it finished", file=sys.stderr)
            return 1
        if last.get("message"):
            print(f"lmcpipe: {last['message']}", file=sys.stderr)
        return int(last["exit"])


def process_state() -> dict:
    """Return the caller's umask, niceness and resource limits, which a fork does not carry."""
    import resource

    limits = {name: list(resource.getrlimit(getattr(resource, name)))
              for name in RESOURCE_LIMITS if hasattr(resource, name)}
    return {"umask": current_umask(), "nice": os.nice(0), "limits": limits}


def read_message(reader) -> dict | None:
    try:
        line = reader.readline()
    except OSError:
        return None
    if not line:
        return None
    try:
        return json.loads(line)
    except ValueError:
        return None


def package_folder() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def current_umask() -> int:
    """Return the process's umask, which can only be read by setting it (it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
