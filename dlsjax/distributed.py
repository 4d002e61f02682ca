"""Multi-process runs: starting ``jax.distributed``, the primary process, preemption.

One process per host (a Cloud TPU VM worker, a GPU node, or several processes
on one machine for testing) runs the same command. Each process reads its
rows of every global batch (``pipeline.host_positions``), gradients are
averaged over all devices of all processes, and process 0 alone writes what
only one should (logs, metrics, figures); orbax checkpoints are saved by all
processes together.

How a process learns the job's shape, in order:

* the command line: ``--coordinator HOST:PORT --num-processes N --process-id I``;
* the environment: ``JAX_COORDINATOR_ADDRESS`` (read by JAX itself),
  ``DLSJAX_NUM_PROCESSES`` and ``DLSJAX_PROCESS_ID``;
* JAX's cluster detection (Cloud TPU pod slices, Slurm, Open MPI), when the
  environment describes one (``distributed="auto"``).

Preemption: on SIGTERM the run goes on to a step every process agrees on
(JAX's preemption sync point across processes; the next step in a single
process), saves a checkpoint of that step and raises :class:`Preempted`; the
command line exits with :data:`PREEMPTED_EXIT_CODE`, and ``--resume``
continues at the exact batch.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

import jax

log = logging.getLogger(__name__)

# EX_TEMPFAIL of sysexits.h: "a temporary failure; the user is invited to retry".
PREEMPTED_EXIT_CODE = 75


class DistributedError(RuntimeError):
  """A multi-process job that cannot start (the message names the setting)."""


class Preempted(RuntimeError):
  """SIGTERM arrived; a checkpoint of the step all processes agreed on was saved."""

  def __init__(self, what: str, step: int, epoch: int, batch: int, directory):
    super().__init__(
      f"{what}: preempted (SIGTERM); saved the checkpoint of step {step} (epoch {epoch + 1}, "
      f"batch {batch}) in {directory}. Rerun the same command with --resume to continue."
    )
    self.step, self.epoch, self.batch = step, epoch, batch


def _cluster_environment() -> bool:
  env = os.environ
  return (
    "JAX_COORDINATOR_ADDRESS" in env
    or len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
    or "MEGASCALE_COORDINATOR_ADDRESS" in env
    or _count(env.get("SLURM_NTASKS")) > 1
    or _count(env.get("OMPI_COMM_WORLD_SIZE")) > 1
  )


def _count(raw: str | None) -> int:
  try:
    return int(raw or 1)
  except ValueError:
    return 1


def initialize(
  mode: bool | str = "auto",
  *,
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  timeout_s: int = 300,
) -> None:
  """Start ``jax.distributed`` (before any other JAX call), or do nothing.

  ``mode``: ``"auto"`` starts it when a process count above one is given (an
  argument or ``DLSJAX_NUM_PROCESSES``) or the environment describes a cluster;
  ``"on"``/``True`` always; ``"off"``/``False`` never. Calling it again in a
  process that has started is a no-op.
  """
  if mode in (False, "off") or jax.distributed.is_initialized():
    return
  env = os.environ
  coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and env.get("DLSJAX_NUM_PROCESSES"):
    num_processes = _int_setting("DLSJAX_NUM_PROCESSES", env["DLSJAX_NUM_PROCESSES"])
  if process_id is None and env.get("DLSJAX_PROCESS_ID"):
    process_id = _int_setting("DLSJAX_PROCESS_ID", env["DLSJAX_PROCESS_ID"])
  explicit = num_processes is not None or process_id is not None
  if mode == "auto" and not (explicit and (num_processes or 1) > 1) and not _cluster_environment():
    return
  if explicit:
    missing = [
      name
      for name, value in (
        ("--coordinator (or JAX_COORDINATOR_ADDRESS)", coordinator),
        ("--num-processes (or DLSJAX_NUM_PROCESSES)", num_processes),
        ("--process-id (or DLSJAX_PROCESS_ID)", process_id),
      )
      if value is None
    ]
    if missing:
      raise DistributedError(f"a multi-process run needs {', '.join(missing)} as well")
    if not 0 <= process_id < num_processes:
      raise DistributedError(
        f"--process-id {process_id} is not in [0, --num-processes {num_processes})"
      )
  if coordinator and process_id:  # JAX aborts the process when it cannot connect: check first
    _wait_for_coordinator(coordinator, timeout_s, process_id, num_processes)
  log.info(
    "jax.distributed: process %s of %s, coordinator %s (waiting up to %d s for every process)",
    process_id, num_processes, coordinator or "from the cluster", timeout_s,
  )  # fmt: skip
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator,
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=int(timeout_s),
    )
  except Exception as e:  # JAX raises XlaRuntimeError / RuntimeError / ValueError here
    where = coordinator or "the cluster's coordinator"
    raise DistributedError(
      f"jax.distributed could not start: process {process_id} of {num_processes} did not "
      f"reach the coordinator {where} within {timeout_s} s (--coordinator / "
      f"JAX_COORDINATOR_ADDRESS, --distributed-timeout). Start process 0 on that address and "
      f"every process with the same --num-processes. ({type(e).__name__}: {str(e)[:300]})"
    ) from None
  log.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
  )  # fmt: skip


def _wait_for_coordinator(address: str, timeout_s: float, process_id, num_processes) -> None:
  """Return once ``address`` (HOST:PORT) accepts connections; a clear error after the timeout."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise DistributedError(f"--coordinator {address!r}: expected HOST:PORT")
  deadline = time.monotonic() + float(timeout_s)
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise DistributedError(
          f"process {process_id} of {num_processes}: the coordinator {address} "
          f"(--coordinator / JAX_COORDINATOR_ADDRESS) did not answer within {timeout_s} s "
          f"({e.strerror or e}). Start process 0 with the same --coordinator, or raise "
          "--distributed-timeout."
        ) from None
      time.sleep(0.5)


def _int_setting(name: str, raw: str) -> int:
  try:
    return int(raw)
  except ValueError:
    raise DistributedError(f"{name}={raw!r} is not an integer") from None


def is_primary() -> bool:
  """Process 0: the one that writes logs, metrics, figures and the run's JSON files."""
  return jax.process_index() == 0


def job_shape() -> dict:
  """What a checkpoint records of the job, so a resume under another shape is refused."""
  return {"processes": jax.process_count(), "devices": jax.device_count()}


def check_job_shape(meta: dict, directory) -> None:
  """Refuse to resume a checkpoint written by a job of another process or device count."""
  saved = meta.get("job")
  if saved is None:
    return
  now = job_shape()
  if saved != now:
    raise DistributedError(
      f"{directory}: the checkpoint was written by {saved['processes']} process(es) with "
      f"{saved['devices']} device(s), this run has {now['processes']} with {now['devices']}; "
      "the data order depends on both, so the run cannot continue exactly. Resume with the "
      "same --num-processes and devices, or start a new --workdir."
    )


class Preemption:
  """``reached(step)``: True at the step where every process saves and stops after SIGTERM.

  Several processes use JAX's preemption sync point (the coordination service
  catches SIGTERM on any process and picks the step after the largest step any
  process has reached). One process catches SIGTERM itself and stops at the
  next step. ``close()`` restores the previous signal handler.
  """

  def __init__(self):
    self._sync = jax.distributed.is_initialized() and jax.process_count() > 1
    self._flag = False
    self._previous = None
    if not self._sync and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    self._flag = True
    log.warning("SIGTERM: saving a checkpoint after this step, then stopping")

  def reached(self, step: int) -> bool:
    if self._sync:
      from jax.experimental import multihost_utils

      return bool(multihost_utils.reached_preemption_sync_point(int(step)))
    return self._flag

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def __enter__(self) -> Preemption:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
