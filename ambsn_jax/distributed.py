"""Joining a multi-process run (`jax.distributed`) and leaving it without hanging.

Every process runs the same command. It joins when told where the coordinator (process 0) is
(`--coordinator` or JAX_COORDINATOR_ADDRESS, with the process count and this process's index
from flags, JAX_NUM_PROCESSES / JAX_PROCESS_ID, or the cluster), or when Slurm or Open MPI
started more than one task (JAX reads the rest from their variables); `--cluster NAME` names
the cluster JAX should read instead (slurm, ompi, mpi4py, tpu, ...), `--cluster jax` lets JAX
detect any it knows (Kubernetes, TPU pods), `--cluster off` never joins.

What can go wrong, and what every process then does (docs/cluster.md):
- the coordinator does not answer within `join_timeout`: one `error:` line, exit 2;
- a process is lost (killed, its host gone): every other one notices within `peer_timeout`
  (plus a poll of `POLL_SECONDS`), prints one line naming it and exits with `LOST_PEER`;
  the checkpoints committed before stay whole (Orbax publishes a step once all is written);
- all processes end: at exit they wait for each other (`EXIT_WAIT_SECONDS`, or `peer_timeout`
  after a failure), so that none takes the coordinator away while another still works.

JAX would abort a survivor (SIGABRT, a C++ stack) once a peer misses its heartbeats; here
JAX's recoverable mode is on, so that JAX reports the lost peer and this module ends the run.
One exception: when process 0 itself dies, JAX aborts the others at once (exit 134), which
no setting changes today.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import platform
import sys
import threading
from collections.abc import Callable, Mapping

from ambsn_jax.errors import UserError

# Exit status when a peer was lost: sysexits' EX_TEMPFAIL, "try again": rerunning the same
# command on every host resumes from the last complete checkpoint.
LOST_PEER = 75
POLL_SECONDS = 2.0
# How long a process that finished waits for the others to finish too.
EXIT_WAIT_SECONDS = 300
# `jax`: whatever JAX detects (Kubernetes with `jax[k8s]`, TPU pods, ...); the others name
# one of JAX's cluster types.
CLUSTERS = ("auto", "off", "jax", "slurm", "ompi", "mpi4py", "tpu", "gcetpu", "gketpu")
# What says "more than one process" in the clusters `auto` joins without being told: for Slurm,
# the tasks of this job step (`srun`), so that the batch script itself runs alone.
_TASK_COUNTS = {"slurm": "SLURM_STEP_NUM_TASKS", "ompi": "OMPI_COMM_WORLD_SIZE"}
_PREFIX = "ambsn"


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to join: None fields are left to the environment / JAX's cluster detection."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    cluster: str = "auto"
    join_timeout: int = 300
    peer_timeout: int = 60


def speaker() -> str:
    """The prefix of a line that one process of several writes about its own work, naming
    it ('process 1 of 2 (host): '); '' when the process runs alone."""
    import jax

    if jax.process_count() == 1:
        return ""
    return f"process {jax.process_index()} of {jax.process_count()} ({platform.node()}): "


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if not value:
        return None
    if not value.isdigit():
        raise UserError(f"{name}={value!r}: must be a non-negative integer")
    return int(value)


def resolve(settings: Settings, env: Mapping[str, str] = os.environ) -> dict | None:
    """The keyword arguments of `jax.distributed.initialize`, or None: a single process.

    Flags win over JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, which win
    over the cluster's own variables (read by JAX).
    """
    if settings.cluster == "off":
        return None
    coordinator = settings.coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
    counts = {
        "num_processes": settings.num_processes if settings.num_processes is not None else _env_int(env, "JAX_NUM_PROCESSES"),
        "process_id": settings.process_id if settings.process_id is not None else _env_int(env, "JAX_PROCESS_ID"),
    }
    several_tasks = any((_env_int(env, var) or 0) > 1 for var in _TASK_COUNTS.values())
    if settings.cluster == "auto" and coordinator is None and not several_tasks:
        return None
    if coordinator is not None and ":" not in coordinator:
        raise UserError(f"coordinator {coordinator!r}: must be HOST:PORT (the address of process 0)")
    method = None if settings.cluster in ("auto", "jax") else settings.cluster
    return {
        "coordinator_address": coordinator,
        **{k: v for k, v in counts.items() if v is not None},
        "cluster_detection_method": method,
        # JAX's own deadline would abort the process; `_join`'s comes first and explains.
        "initialization_timeout": settings.join_timeout + 60,
        "heartbeat_timeout_seconds": settings.peer_timeout,
    }


def _join(kwargs: dict, join_timeout: int) -> None:
    import jax

    jax.config.update("jax_enable_recoverability", True)
    who = f"process {kwargs.get('process_id', '?')} of {kwargs.get('num_processes', '?')}"
    where = kwargs["coordinator_address"] or "the address the cluster gives"

    def give_up() -> None:
        print(f"error: {who} could not join the run at {where} within {join_timeout} s: the coordinator "
              "(process 0) does not answer or not every process started; check the address "
              "(--coordinator / JAX_COORDINATOR_ADDRESS), the process count, and that process 0 runs "
              "(--join-timeout sets the wait)", file=sys.stderr, flush=True)  # fmt: skip
        os._exit(2)

    # JAX's connect aborts the process (SIGABRT and a C++ stack) when it times out.
    timer = threading.Timer(join_timeout, give_up)
    timer.daemon = True
    timer.start()
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:  # JAX found no cluster to fill in what is missing
        raise UserError(f"cannot join a multi-process run: {e} (see --coordinator, --cluster)") from e
    finally:
        timer.cancel()


def _client():
    from jax._src import distributed

    return distributed.global_state.client


def _lookup(key: str) -> str | None:
    """The run's key-value store at `key`; None when unset or the store is out of reach."""
    try:
        return _client().key_value_try_get(key)
    except Exception:  # noqa: BLE001 - NOT_FOUND, or the coordinator gone
        return None


class Watcher(threading.Thread):
    """Polls which processes are alive; a lost one ends this process with `LOST_PEER`."""

    def __init__(self, peer_timeout: int):
        import jax

        super().__init__(name="ambsn-peer-watcher", daemon=True)
        self.count = jax.process_count()
        self.peer_timeout = peer_timeout
        self.leaving = threading.Event()
        self.polls = threading.Condition()
        self.healthy_polls = 0  # polls that found every process alive
        _client().key_value_set(f"{_PREFIX}/host/{jax.process_index()}", platform.node())

    def _left(self, process: int) -> bool:
        """Whether `process` passed the exit barrier (so the whole run ended well)."""
        return _lookup(f"{_PREFIX}/done/{process}") is not None

    def _lost(self, process: int, why: str) -> None:
        host = _lookup(f"{_PREFIX}/host/{process}") or "?"
        print(f"error: lost process {process} of {self.count} (host {host}): {why}; exiting with status "
              f"{LOST_PEER}; rerun the same command on every host to resume from the last complete checkpoint",
              file=sys.stderr, flush=True)  # fmt: skip
        os._exit(LOST_PEER)

    def run(self) -> None:
        processes = list(range(self.count))
        while not self.leaving.is_set():
            try:
                # A barrier of the live processes: it returns once JAX declared the silent ones dead.
                live = _client().get_live_nodes(processes)
            except Exception as e:  # noqa: BLE001 - any failure of the service means process 0 is gone
                if not self.leaving.is_set():
                    self._lost(0, f"the coordinator stopped answering ({str(e).splitlines()[0][:120]})")
                return
            gone = [p for p in processes if p not in live]
            if gone and not self.leaving.is_set():
                if all(self._left(p) for p in gone):
                    return
                self._lost(gone[0], f"no heartbeat for {self.peer_timeout} s")
            with self.polls:
                self.healthy_polls += 1
                self.polls.notify_all()
            self.leaving.wait(POLL_SECONDS)

    def await_verdict(self, timeout: float) -> None:
        """Returns once a poll that began after this call found every process alive (a lost
        one ends the process first), or after `timeout` seconds."""
        with self.polls:
            # The poll in flight may have begun before a peer died: wait for the one after it.
            target = self.healthy_polls + 2
            self.polls.wait_for(lambda: self.healthy_polls >= target, timeout)


class _Session:
    """This process's part in the run, from joining to leaving at exit (once per process:
    a process may run several commands, as the tests do, before it leaves)."""

    def __init__(self, peer_timeout: int):
        import jax

        self.me, self.count = jax.process_index(), jax.process_count()
        self.peer_timeout = peer_timeout
        self.failed = False
        self.watcher = Watcher(peer_timeout)
        self.watcher.start()
        # After JAX's own exit handlers are registered, so this one runs first.
        atexit.register(self.leave)

    def leave(self) -> None:
        """Waits for every process at the exit barrier, then disconnects: process 0, which
        hosts the coordinator, last (JAX aborts the others when it goes first)."""
        import jax

        client = _client()
        try:
            client.wait_at_barrier(f"{_PREFIX}/exit", (self.peer_timeout if self.failed else EXIT_WAIT_SECONDS) * 1000)
        except Exception:  # noqa: BLE001 - a peer that never came: its watchers, or ours, report it
            return
        self.watcher.leaving.set()
        client.key_value_set(f"{_PREFIX}/done/{self.me}", "1")
        if self.me == 0:
            waiter = threading.Thread(target=_until_alone, args=(self.count,), daemon=True)
            waiter.start()
            waiter.join(self.peer_timeout)
        jax.distributed.shutdown()


def _until_alone(count: int) -> None:
    while len(_client().get_live_nodes(list(range(count)))) > 1:
        threading.Event().wait(0.1)


_session: _Session | None = None


def run(settings: Settings, body: Callable[[], int]) -> int:
    """Joins the run `settings` describe (if not yet joined, and if any) and returns
    `body()`'s exit status; every process leaves together at exit, and a lost peer ends the
    process (see the module's doc)."""
    global _session
    kwargs = resolve(settings)
    if kwargs is None:
        return body()
    if _session is None:
        import jax

        if not jax.distributed.is_initialized():
            _join(kwargs, settings.join_timeout)
        _session = _Session(settings.peer_timeout)
    try:
        status = body()
    except BaseException:
        _session.failed = True
        # A collective that failed because a peer died: let the watcher name it (and exit)
        # rather than print a traceback about a closed connection.
        _session.watcher.await_verdict(settings.peer_timeout + 3 * POLL_SECONDS)
        raise
    _session.failed |= status != 0
    return status
