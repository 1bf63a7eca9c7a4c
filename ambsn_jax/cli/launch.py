"""`ambsn-launch` / `python -m ambsn_jax.cli.launch`: a multi-process run on this machine alone.

    ambsn-launch --processes 2 --devices-per-process 2 -- train.py --config demo

starts the command N times with CPU devices, joined by `jax.distributed` through a coordinator
on 127.0.0.1 (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; JAX's CPU
collectives), so that every multi-process path (sharded steps, the preemption vote, per-process
manifests, a lost peer) runs on one machine as it would on several hosts (docs/cluster.md).
A command ending in `.py` runs with this Python.

Each line a process writes comes out prefixed `[I] ` on the same stream; one line names each
process that exited with a non-zero status. SIGTERM and SIGINT are
passed on to every process (each in its own process group, so that Ctrl-C reaches them once).
Exit status: the worst of the processes' (a process a signal ended counts as 128 + N), 2 for a
bad command line.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO

from ambsn_jax.cli.common import ArgumentParser, run_cli
from ambsn_jax.errors import UserError


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Run a command as N processes of one multi-process JAX run on this machine's CPUs.")
    p.add_argument("--processes", type=int, required=True, metavar="N", help="how many processes")
    p.add_argument("--devices-per-process", type=int, default=1, metavar="K", help="CPU devices each process sees (%(default)s)")
    p.add_argument("--port", type=int, metavar="P", help="the coordinator's port on 127.0.0.1 (default: a free one)")
    p.add_argument("command", nargs="+", help="after `--`: the command every process runs, e.g. train.py --config demo")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(index: int, processes: int, devices: int, port: int, env: dict[str, str]) -> dict[str, str]:
    """Process `index`'s environment: the run's coordinates and its CPU devices."""
    flags = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    # Lines reach the prefixing threads as they are written, not when a buffer fills.
    env = {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags, "PYTHONUNBUFFERED": "1"}
    if processes == 1:  # a plain run, for comparison
        return env
    return env | {
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "JAX_NUM_PROCESSES": str(processes),
        "JAX_PROCESS_ID": str(index),
    }


def _relay(source: IO[bytes], sink: IO[bytes], prefix: bytes) -> None:
    for line in iter(source.readline, b""):
        sink.write(prefix + line)
        sink.flush()
    source.close()


def status_of(code: int) -> int:
    """A child's exit status as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - code if code < 0 else code


def _launch(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.processes < 1 or args.devices_per_process < 1:
        raise UserError("--processes and --devices-per-process must be at least 1")
    command = list(args.command)
    if command[0].endswith(".py"):
        command.insert(0, sys.executable)
    port = args.port or free_port()
    procs, relays = [], []
    for i in range(args.processes):
        env = child_env(i, args.processes, args.devices_per_process, port, dict(os.environ))
        try:
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            raise UserError(f"cannot start {command[0]}: {e.strerror}") from e
        procs.append(proc)
        prefix = f"[{i}] ".encode()
        for source, sink in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer)):
            relays.append(threading.Thread(target=_relay, args=(source, sink, prefix), daemon=True))
            relays[-1].start()

    def forward(signum: int, frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signum)
                except ProcessLookupError:  # ended meanwhile
                    pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [proc.wait() for proc in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for relay in relays:
        relay.join()
    statuses = [status_of(code) for code in codes]
    for i, status in enumerate(statuses):
        if status:
            print(f"ambsn-launch: process {i} exited with status {status}", file=sys.stderr, flush=True)
    return max(statuses)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line `argv` (default: sys.argv[1:]); returns the exit status."""
    return run_cli(_launch, argv)


if __name__ == "__main__":
    sys.exit(main())
