"""The ``lmcpipe`` command's entry point: hand the command to a worker, or run it here.

Each step of a study starts this command, so until the command has gone to a
worker, it imports only ``os``, ``__future__`` and modules built into the
interpreter or C extensions of the standard library: no ``json``, ``socket``
or ``signal``, whose Python parts cost about 10 ms each. When
``$LMCPIPE_WORKER`` names a running worker (:mod:`lmcpipe.worker`), the
command runs in a child of that process, which has imported the
dependencies already. Without a worker, or when the worker
rejects the request, the command runs in this process
(:func:`lmcpipe.cli.main`).

During a Snakemake run, the jobs' ``lmcpipe`` is a script of the worker's
that starts Python without the ``site`` module and calls :func:`forward`
(see :meth:`lmcpipe.worker.Worker.publish`).
"""

from __future__ import annotations

import marshal
import os
import sys

ADDRESS_ENV_VAR = "LMCPIPE_WORKER"

# Resource limits (ulimit) that a request must share with the worker.
RESOURCE_LIMITS = (
    "RLIMIT_AS", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CPU", "RLIMIT_FSIZE",
    "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CORE",
)

# A message is its length as 4 bytes (network order), then its marshal
# encoding of a dict of plain values. marshal is built into the interpreter.
# Both ends run the same Python: after decoding, the worker rejects requests
# from another installation.
HEADER_SIZE = 4


def main() -> int:
    """Run ``lmcpipe`` with the command line's arguments; return its exit status."""
    status = run_in_worker(sys.argv[1:])
    if status is not None:
        return status
    from lmcpipe.cli import main as run_here

    return run_here(sys.argv[1:])


def forward(command: str, prefix: str) -> int:
    """Run ``lmcpipe`` in the worker, or else replace this process with ``command``.

    The entry point of the worker's script for the jobs of one run. That
    script's Python has not imported ``site``, so the command cannot run here:
    ``command``, this Python's own ``lmcpipe`` script, runs it instead, without
    asking the worker again.

    ``prefix`` is the ``sys.prefix`` of the script's Python with ``site``.
    In a virtual environment, ``site`` sets ``sys.prefix`` to the environment,
    so without it ``sys.prefix`` is the base installation's (CPython 3.10 to
    3.13), which the worker would reject as another installation.
    """
    status = run_in_worker(sys.argv[1:], prefix)
    if status is not None:
        return status
    # execv passes on the process's own environment, unlike a copy of
    # os.environ: it keeps entries that os.environ cannot set, such as "=x".
    os.environ.pop(ADDRESS_ENV_VAR, None)
    try:
        os.execv(command, [command, *sys.argv[1:]])
    except OSError as error:
        print(f"lmcpipe: cannot run {command}: {error}", file=sys.stderr)
        return 127


def run_in_worker(argv: list[str], prefix: str | None = None) -> int | None:
    """Run ``lmcpipe ARGV`` in the worker named by ``$LMCPIPE_WORKER``.

    ``prefix`` replaces ``sys.prefix`` in the request (see :func:`forward`).

    Returns:
        The command's exit status, or None when no worker is set, the
        connection fails, or the worker rejected the request. The caller then
        runs the command itself.
    """
    address = os.environ.get(ADDRESS_ENV_VAR)
    if not address:
        return None
    # The C modules under the standard library's socket, struct and signal modules.
    import _signal
    import _socket
    import _struct

    try:
        # A closed standard stream would be replaced by the socket below.
        for fd in (0, 1, 2):
            os.fstat(fd)
        request = encode({
            "argv": list(argv),
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "prefix": sys.prefix if prefix is None else prefix,
            "package": package_folder(),
            **process_state(),
        })
        connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    except (OSError, ValueError):
        return None
    try:
        try:
            connection.connect(address)
            # The stream descriptors travel with the first bytes of the request.
            descriptors = _struct.pack("3i", 0, 1, 2)
            sent = connection.sendmsg(
                [request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, descriptors)]
            )
            connection.sendall(request[sent:])
        except OSError:
            return None
        first = read_message(connection)
        if first is None or "rejected" in first:
            return None
        # From here on the step runs in the worker's child: never run it twice.
        try:
            last = read_message(connection)
        except KeyboardInterrupt:
            # The worker stops the child when this connection closes.
            return 128 + _signal.SIGINT
        if last is None or "exit" not in last:
            print(f"lmcpipe: the worker running this command (pid {first.get('accepted')}) "
                  "stopped before it finished", file=sys.stderr)
            return 1
        if last.get("message"):
            print(f"lmcpipe: {last['message']}", file=sys.stderr)
        return int(last["exit"])
    finally:
        connection.close()


def encode(message: dict) -> bytes:
    """Return ``message`` as the bytes of one message (see ``HEADER_SIZE``)."""
    body = marshal.dumps(message)
    return len(body).to_bytes(HEADER_SIZE, "big") + body


def decode(body: bytes) -> dict | None:
    """Return the message encoded in ``body`` (without its header), or None if it is not one."""
    # marshal.loads raises more than ValueError on malformed data, for example
    # SystemError for a malformed code object, and none of it may stop the worker.
    # NOTE: some malformed data crashes the interpreter instead (a segmentation
    # fault in CPython 3.11). Only this user's processes can connect, because
    # the socket is 0600 in a 0700 folder.
    try:
        message = marshal.loads(body)
    except Exception:  # noqa: BLE001 - any malformed body is "not a message"
        return None
    return message if isinstance(message, dict) else None


def read_message(connection) -> dict | None:
    """Return the next message from a blocking socket, or None if it closes first or sends no valid message."""
    header = _receive(connection, HEADER_SIZE)
    if header is None:
        return None
    body = _receive(connection, int.from_bytes(header, "big"))
    return None if body is None else decode(body)


def _receive(connection, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = connection.recv(min(size - len(data), 1 << 20))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def process_state() -> dict:
    """Return the caller's umask, niceness and resource limits, which a fork does not carry."""
    import resource

    limits = {name: list(resource.getrlimit(getattr(resource, name)))
              for name in RESOURCE_LIMITS if hasattr(resource, name)}
    return {"umask": current_umask(), "nice": os.nice(0), "limits": limits}


def package_folder() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def current_umask() -> int:
    """Return the process's umask, which can only be read by setting it (it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
