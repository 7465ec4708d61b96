"""Each worker says what it is (its devices: how many, which kind, the
memory of each; worker/devices.py) and what it is doing, so the workers
page can show it, pre-flight checks can ask a pool how much memory and how
many devices it has (studio.workers.selectors) and the claim can tell which
jobs fit it.

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
from worker.devices import Devices, worker_address, worker_devices

log = logging.getLogger(__name__)

_thread: threading.Thread | None = None
_stop = threading.Event()
_name = ""


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


def _register(name: str, pool: str, devices: Devices) -> None:
    worker_register(name=name, pool=pool, hostname=socket.gethostname(), pid=os.getpid(),
                    device=devices.description, device_memory_mib=devices.memory_mib, device_count=devices.count,
                    device_kind=devices.kind, address=worker_address())


def _current_job_id() -> int | None:
    return runner.current_job_id  # set by worker.runner while a job runs


def _beat_forever(name: str, pool: str, stop: threading.Event) -> None:
    devices = worker_devices()  # seconds (torch import): the worker may be told to stop meanwhile
    registered = False
    wait = 0.0  # register at once; then every JOB_HEARTBEAT_S seconds
    while not stop.wait(wait):
        wait = settings.JOB_HEARTBEAT_S
        try:
            if not registered:
                _register(name, pool, devices)
                registered = True
                log.info("registered worker %s (pool %s, %d × %s, %d MiB each)", name, pool, devices.count,
                         devices.description, devices.memory_mib)
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
