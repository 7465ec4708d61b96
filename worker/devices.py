"""What this worker process can train on: how many devices, of which kind,
with how much memory each. Read once from torch (the visible CUDA GPUs,
which CUDA_VISIBLE_DEVICES limits) and overridden by the settings
WORKER_DEVICES (a count) and WORKER_DEVICE_MEMORY_MIB (per device): a CPU
worker counts as one device unless WORKER_DEVICES says how many training
processes it may run. The registry reports it (worker/registry.py), the
claim asks for jobs that fit (worker/runner.py)."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from functools import cache

from django.conf import settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Devices:
    count: int
    kind: str  # "cuda" or "cpu"
    description: str  # "CUDA: NVIDIA H100 80GB HBM3", "CPU: 16 cores, …"
    memory_mib: int  # per device


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


def _detected() -> Devices:
    """The visible CUDA GPUs, else the CPU and the machine's RAM. Imports torch (seconds): the registry
    thread calls this off the worker's start-up path, and a worker loads torch for its first job anyway."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count():
            props = torch.cuda.get_device_properties(0)
            return Devices(torch.cuda.device_count(), "cuda", f"CUDA: {props.name}", props.total_memory // (1 << 20))
    except Exception:  # noqa: BLE001 -- a broken CUDA set-up still leaves a CPU worker worth listing
        log.exception("could not read the CUDA devices; registering as a CPU worker")
    return Devices(1, "cpu", cpu_description(), ram_mib())


@cache
def worker_devices() -> Devices:
    """This worker's devices, the settings' overrides applied (read once per process)."""
    found = _detected()
    count = settings.WORKER_DEVICES or found.count
    memory = settings.WORKER_DEVICE_MEMORY_MIB or found.memory_mib
    return Devices(count, found.kind, found.description, memory)


def worker_address() -> str:
    """Where the other workers of the pool reach this one (a job's rendezvous): WORKER_ADDRESS, else the
    host name."""
    return settings.WORKER_ADDRESS or socket.gethostname()
