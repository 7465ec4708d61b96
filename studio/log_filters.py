"""Logging filters for lines libraries print while they import, which say nothing a studio user can act on.

Each is dropped by its logger and the start of its message, so anything else those libraries log (a real
failure at run time) still shows. Attached in ``settings.LOGGING``; standard library only, since it is
configured before any of those libraries is imported.
"""

from __future__ import annotations

import logging

# logger name -> message starts that are dropped, and why
IMPORT_NOISE = {
    # torchao ships CUDA kernels (mxfp8, cutlass sm90a) as optional shared objects; on a machine without
    # such a GPU each fails to load and says so at every import. The CPU schemes do not use them.
    "torchao": ("Failed to load ",),
    # torchao's int8 matmul looks for Triton (a GPU compiler) on import; the CPU paths do not need it.
    "torchao.kernel.intmm": ("Warning: Detected no triton",),
    # torch 2.13 warns that torchao still registers its enums as pytree constants; harmless until torchao
    # changes, and not something a studio user can do anything about.
    "torch.utils._pytree": ("%s is an Enum subclass",),
}


class ImportNoise(logging.Filter):
    """Drops the records of ``IMPORT_NOISE`` for the logger it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        starts = IMPORT_NOISE.get(record.name, ())
        return not (isinstance(record.msg, str) and record.msg.startswith(starts))
