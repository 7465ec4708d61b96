"""Each worker says what it is (device, memory) and what it is doing, so the
workers page can show it and pre-flight checks can ask a pool how much
memory it has (studio.workers.selectors.pool_device_memory_mib).

``start_registry`` runs a daemon thread in the worker process: it registers
the worker, renews a heartbeat every JOB_HEARTBEAT_S seconds with the job it
runs (``worker.runner.current_job_id``) and its memory, and ``stop_registry``
marks it stopped on a clean shutdown. A worker killed outright stops beating
and shows as lost after JOB_LOST_AFTER_S.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from django.conf import settings
from django.db import connection

from studio.workers.services import worker_heartbeat, worker_register, worker_stopped
from worker import runner

log = logging.getLogger(__name__)

_thread: threading.Thread | None = None
_stop = threading.Event()
_name = ""


def cpu_description() -> str:
    """"CPU: 16 cores, Intel(R) Xeon(R) …": the cores this process may use
    (its affinity, as a container or taskset limits it) and the model name."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    model = value.strip()
                    break
    except OSError:  # not Linux: the core count alone still helps
        pass
    return f"CPU: {cores} cores" + (f", {model}" if model else "")


def ram_mib() -> int:
    """The machine's physical memory in MiB."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (ValueError, OSError, AttributeError):
        return 0


def rss_mib() -> int:
    """This process's resident set size in MiB (VmRSS in /proc/self/status, kB)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def device_info() -> tuple[str, int]:
    """(description, memory in MiB) of the device this worker trains on: its
    first visible CUDA GPU (CUDA_VISIBLE_DEVICES gives each worker one), else
    the CPU and the machine's RAM. Imports torch: a worker loads it for its
    first job anyway, and this runs in the registry thread, off the
    worker's start-up path."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return f"CUDA: {props.name}", props.total_memory // (1 << 20)
    except Exception:  # noqa: BLE001 -- a broken CUDA set-up still leaves a CPU worker worth listing
        log.exception("could not read the CUDA device; registering as a CPU worker")
    return cpu_description(), ram_mib()


def _register(name: str, pool: str, device: str, memory_mib: int) -> None:
    worker_register(name=name, pool=pool, hostname=socket.gethostname(), pid=os.getpid(), device=device,
                    device_memory_mib=memory_mib)


def _current_job_id() -> int | None:
    return runner.current_job_id  # set by worker.runner while a job runs


def _beat_forever(name: str, pool: str, stop: threading.Event) -> None:
    device, memory_mib = device_info()  # seconds (torch import): the worker may be told to stop meanwhile
    registered = False
    wait = 0.0  # register at once; then every JOB_HEARTBEAT_S seconds
    while not stop.wait(wait):
        wait = settings.JOB_HEARTBEAT_S
        try:
            if not registered:
                _register(name, pool, device, memory_mib)
                registered = True
                log.info("registered worker %s (pool %s, %s, %d MiB)", name, pool, device, memory_mib)
            # A missing row (deleted by an admin) means: register again next round.
            registered = worker_heartbeat(name=name, current_job_id=_current_job_id(), memory_used_mib=rss_mib())
        except Exception:  # the database may be restarting: try again next round, never kill the worker
            log.exception("worker registry heartbeat failed")
        finally:
            connection.close()  # this thread's own connection; a fresh one next round survives DB restarts


def start_registry(worker_name: str, pool: str) -> threading.Thread:
    """Start the registry thread for this worker process (once; a second
    call returns the running thread)."""
    global _thread, _name
    if _thread is not None and _thread.is_alive():
        return _thread
    _name = worker_name
    _stop.clear()
    _thread = threading.Thread(target=_beat_forever, args=(worker_name, pool, _stop), name="worker-registry",
                               daemon=True)
    _thread.start()
    return _thread


def stop_registry(timeout: float = 5.0) -> None:
    """Stop beating and mark the worker stopped (a clean shutdown; the
    thread is joined first so a last heartbeat cannot undo the mark)."""
    global _thread
    if _thread is None:
        return
    _stop.set()
    _thread.join(timeout)
    _thread = None
    try:
        worker_stopped(name=_name)
    except Exception:  # shutting down anyway; the row turns "lost" after JOB_LOST_AFTER_S instead
        log.exception("could not mark worker %s stopped", _name)
    finally:
        connection.close()
