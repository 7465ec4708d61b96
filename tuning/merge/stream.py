"""The whole-model merge loop shared by the "models" group: for each tensor
name, read it from the base and from every source, merge, write it out.

Memory: one tensor per source and the base at a time, plus the method's
working copies of that tensor; the output goes straight to disk
(``ShardWriter``), in file order so the writes are sequential.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from tuning.events import LogEvent
from tuning.merge.sources import copy_base_files, fold_with_peft, torch_dtype
from tuning.merge.tensors import (LoraModelReader, ModelReader, ShardWriter, lora_is_streamable, safetensors_dtype,
                                  torch_dtype_of)

SHARD_BYTES = 2 * 2**30  # transformers' usual shard size; the writer keeps none of it in memory
FLOAT_DTYPES = ("F32", "BF16", "F16", "F64")

# merge(name, base tensor, source tensors) -> merged tensor; all fp32.
TensorMerge = Callable[[str, object, list], object]


def open_readers(job) -> list:
    """One reader per source, giving full-model tensors: a model directory
    as is, a plain LoRA adapter folded per tensor, and any other adapter
    folded by peft into a scratch directory first (whole model in memory
    once, for that step only)."""
    bases: dict[Path, ModelReader] = {}

    def base_reader(path: Path) -> ModelReader:
        key = path.resolve()
        if key not in bases:
            bases[key] = ModelReader(path)
        return bases[key]

    readers = []
    for index, source in enumerate(job.sources):
        if source.kind == "model":
            readers.append(ModelReader(source.path))
            continue
        base = base_reader(source.base)
        if lora_is_streamable(source.path, set(base.names())):
            readers.append(LoraModelReader(source.path, base))
            continue
        job.sink.emit(LogEvent(message=f"Folding {source.path} into {source.base} with peft first (not a plain "
                                       f"LoRA adapter, so it cannot be folded tensor by tensor)"))
        folded = job.work / f"source-{index}"
        folded.mkdir(parents=True, exist_ok=True)
        fold_with_peft(source.path, source.base, folded, dtype=torch_dtype_of("F32"),
                       trust_remote_code=job.config.trust_remote_code)
        readers.append(ModelReader(folded))
    return readers


def stream_merge(job, merge: TensorMerge) -> dict:
    """Merge every tensor of the base's layout into ``job.out``; returns metadata.

    Reading (and widening to fp32) the next tensor and writing the last
    merged one run on two threads beside the merge itself: file copies and
    dtype conversions were about half of a large merge's time, and they
    release the GIL. At most one tensor set is read ahead and one write is
    in flight, so memory stays a few tensors, not a model."""
    base = ModelReader(Path(job.config.base_model))
    readers = open_readers(job)
    out_dtype = None if job.config.dtype == "auto" else torch_dtype(job.config.dtype, base.directory)
    layout = []
    for name, (dtype, shape) in base.header.items():
        if dtype in FLOAT_DTYPES and out_dtype is not None:
            dtype = safetensors_dtype(out_dtype)
        layout.append((name, dtype, shape))
    writer = ShardWriter(job.out, layout, max_shard_bytes=SHARD_BYTES)
    order = sorted(layout)  # the shards' order

    def read(name: str):
        if base.header[name][0] not in FLOAT_DTYPES:
            return base.get(name, raw=True), None  # integer buffers are not merged
        return base.get(name), [reader.get(name) for reader in readers]

    def write(name: str, tensor, dtype: str) -> None:
        writer.write(name, tensor.to(torch_dtype_of(dtype)))

    reading, writing = ThreadPoolExecutor(max_workers=1), ThreadPoolExecutor(max_workers=1)
    written = None
    try:
        upcoming = reading.submit(read, order[0][0]) if order else None
        for done, (name, dtype, _) in enumerate(order, start=1):
            job.check_stop()
            base_tensor, sources = upcoming.result()
            upcoming = reading.submit(read, order[done][0]) if done < len(order) else None
            merged = base_tensor if sources is None else merge(name, base_tensor, sources)
            if written is not None:
                written.result()  # one write in flight at a time
            written = writing.submit(write, name, merged, dtype)
            job.progress(done, len(order))
        if written is not None:
            written.result()
    except BaseException:
        reading.shutdown(cancel_futures=True)
        writing.shutdown(cancel_futures=True)  # waits for a running write before the shards are removed
        writer.abort()
        raise
    reading.shutdown()
    writing.shutdown()
    writer.close()
    copy_base_files(base.directory, job.out, model=True, dtype=job.config.dtype)
    return {"tensors": len(order)}


def weights_of(job) -> list[float]:
    return [source.weight for source in job.sources]


def seeded_run(merge_tensors):
    """The ``run`` of a method that drops at random: each tensor gets a
    generator seeded by the seed setting and its name (reproducible in any order)."""
    from tuning.merge.common import tensor_generator

    def run(job) -> dict:
        weights = weights_of(job)

        def merge(name, base, tensors):
            generator = tensor_generator(job.params.seed, name)
            return merge_tensors(base, tensors, weights, job.params, generator=generator)

        return stream_merge(job, merge)

    return run
