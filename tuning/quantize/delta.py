"""What the delta-compression schemes (ComPEFT, Delta-CoMe) share: reading a
fine-tune's change from its base one tensor at a time, writing the result so
stock libraries load it, and the compact file that holds the real savings.

A scheme's ``run`` receives the job's own source (a model directory, or an
adapter directory) and the base model (``ctx.base_model``), and writes three
things into its output directory:

- what loads: an adapter source gives an adapter (``adapter_config.json`` and
  ``adapter_model.safetensors``, for peft or transformers with peft), a full
  fine-tune gives a full model (the base plus the compressed change, in the
  source's dtype, for transformers);
- ``delta_packed.safetensors``: the compressed change itself, bit-packed, which
  is what a user would store or send; ``unpack_delta`` (in each scheme) turns
  it back into tensors equal to the loadable output's change;
- ``delta_compression.json``: the sizes of the change before and after and
  the scheme's settings, which the report shows.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from tuning.errors import ConfigError, ModelError
from tuning.merge.tensors import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, ModelReader, ShardWriter, TensorFile,
                                  model_header, nbytes, read_header)

PACKED_FILE = "delta_packed.safetensors"
STATS_FILE = "delta_compression.json"
MODEL_FILES = ("config.json", "generation_config.json")
MAX_SHARD_BYTES = 5 * 2**30


def is_adapter(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).exists()


def check_base(source: Path, base_model: str) -> str | None:
    """Why the change of ``source`` from ``base_model`` cannot be read (None when it can), from headers only."""
    if not base_model:
        return None  # the caller names the missing field
    base = Path(base_model).expanduser()
    if not (base / "config.json").exists():
        return (f"{base_model} is not a local model directory: delta compression reads the base model's tensors "
                f"one at a time, so give the directory of the base model the source was fine-tuned from")
    if is_adapter(source):
        return None
    try:
        source_header, base_header = model_header(source), model_header(base)
    except ModelError as exc:
        return str(exc)
    differing = [name for name, (_, shape) in source_header.items()
                 if name in base_header and base_header[name][1] != shape]
    if differing:
        return (f"{source} is not a fine-tune of {base_model}: {differing[0]} has shape "
                f"{source_header[differing[0]][1]} there and {base_header[differing[0]][1]} in the base")
    if not set(source_header) & set(base_header):
        return f"{source} shares no tensor with {base_model}: it is not a fine-tune of that base"
    return None


def floating(dtype: str) -> bool:
    return dtype in ("F32", "F16", "BF16", "F64")


def adapter_deltas(adapter: Path) -> Iterator[tuple[str, str, object]]:
    """(name, stored dtype, fp32 tensor) of every adapter tensor: an adapter's
    parameters are its change (peft starts LoRA's B, and so every update, at zero)."""
    import torch

    tensors, header = TensorFile(adapter / ADAPTER_WEIGHTS), read_header(adapter / ADAPTER_WEIGHTS)
    for name in tensors.keys():
        tensor = tensors.get_tensor(name)
        yield name, header[name][0], tensor.to(torch.float32) if tensor.is_floating_point() else tensor


def model_deltas(source: Path, base: Path) -> Iterator[tuple[str, str, object, object]]:
    """(name, stored dtype, fp32 change, fp32 base tensor or None) of every
    tensor of a full fine-tune; a tensor the base lacks (or a non-float one)
    has no change to compress and comes with base None and its own values."""
    source_reader, base_reader = ModelReader(source), ModelReader(base)
    base_names = set(base_reader.names())
    for name in source_reader.names():
        dtype = source_reader.header[name][0]
        if name in base_names and floating(dtype):
            base_tensor = base_reader.get(name)
            yield name, dtype, source_reader.get(name) - base_tensor, base_tensor
        else:
            yield name, dtype, source_reader.get(name, raw=True), None


def delta_bytes(source: Path) -> int:
    """Bytes of the change as the source stores it: an adapter's weights, or
    (for a full fine-tune) every float tensor at the source's dtype, which is
    what storing the change uncompressed costs."""
    if is_adapter(source):
        return (source / ADAPTER_WEIGHTS).stat().st_size
    return sum(nbytes(dtype, shape) for dtype, shape in model_header(source).values() if floating(dtype))


class LoadableWriter:
    """Writes what loads: the adapter, or the base plus the change as a full model."""

    def __init__(self, source: Path, base: Path, out_dir: Path):
        from tuning.merge.tensors import torch_dtype_of

        self.source, self.out_dir, self.adapter = source, out_dir, is_adapter(source)
        self._dtype_of = torch_dtype_of
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.adapter:
            adapter_config = json.loads((source / ADAPTER_CONFIG).read_text())
            adapter_config["base_model_name_or_path"] = str(base)  # the base this change was measured against
            (out_dir / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2))
            self._tensors: dict = {}
            self.header = {}
        else:
            for name in MODEL_FILES:
                if (source / name).exists():
                    shutil.copy2(source / name, out_dir / name)
            self.header = model_header(source)
            layout = [(name, dtype, shape) for name, (dtype, shape) in self.header.items()]
            self._writer = ShardWriter(out_dir, layout, max_shard_bytes=MAX_SHARD_BYTES)

    def write(self, name: str, dtype: str, tensor) -> None:
        """``tensor``: the adapter's compressed tensor, or the full model's base + compressed change."""
        value = tensor.to(self._dtype_of(dtype)).contiguous()
        if self.adapter:
            self._tensors[name] = value
        else:
            self._writer.write(name, value)

    def close(self) -> None:
        if self.adapter:
            from safetensors.torch import save_file

            save_file(self._tensors, str(self.out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        else:
            self._writer.close()

    def abort(self) -> None:
        if not self.adapter:
            self._writer.abort()


def write_packed(out_dir: Path, tensors: dict, layout: dict, *, scheme: str, settings: dict) -> int:
    """Write the packed change (``tensors``: (layout name, part suffix) -> torch
    tensor) with its ``layout`` (what each original tensor became) in the
    file's metadata; its bytes. Parts are stored under the layout entry's
    number, not its name: a module's name is ~60 bytes of header a part, which
    on a small adapter outweighed the packed values."""
    from safetensors.torch import save_file

    numbers = {name: number for number, name in enumerate(layout)}
    stored = {f"{numbers[name]}{suffix}": tensor.contiguous() for (name, suffix), tensor in tensors.items()}
    path = out_dir / PACKED_FILE
    save_file(stored, str(path), metadata={"scheme": scheme, "settings": json.dumps(settings),
                                           "layout": json.dumps(layout)})
    return path.stat().st_size


def read_packed(path: Path) -> tuple[dict, dict, dict]:
    """(tensors keyed by layout name + part suffix, layout, settings) of a packed change."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        layout = json.loads(metadata["layout"])
        names = dict(enumerate(layout))
        tensors = {}
        for key in handle.keys():
            number, dot, suffix = key.partition(".")
            tensors[names[int(number)] + dot + suffix] = handle.get_tensor(key)
    return tensors, layout, json.loads(metadata["settings"])


def write_stats(out_dir: Path, *, source: Path, packed_bytes: int, scheme: str, settings: dict, **extra) -> dict:
    before = delta_bytes(source)
    stats = {"scheme": scheme, "settings": settings, "source_kind": "adapter" if is_adapter(source) else "model",
             "delta_bytes_before": before, "delta_bytes_after": packed_bytes,
             "delta_ratio": round(packed_bytes / before, 4) if before else None, **extra}
    (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=2))
    return stats


def pack_bits(codes, bits: int):
    """Unsigned integer codes below 2**bits, ``bits`` bits each, into bytes (a uint8 torch tensor)."""
    import numpy as np
    import torch

    values = np.ascontiguousarray(codes.reshape(-1).numpy().astype(np.uint8))
    planes = np.unpackbits(values[:, None], axis=1)[:, 8 - bits:]  # each code's low ``bits`` bits, high first
    return torch.from_numpy(np.packbits(planes.reshape(-1)))


def unpack_bits(packed, bits: int, count: int):
    """The inverse of ``pack_bits``: ``count`` codes as an int64 torch tensor."""
    import numpy as np
    import torch

    planes = np.unpackbits(packed.numpy())[:count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    return torch.from_numpy(planes.astype(np.int64) @ weights)


def load_output(out_dir: Path, *, trust_remote_code: bool = False):
    """A delta scheme's output as a model, the way a user loads it: transformers
    for a full model; peft on the base (from adapter_config.json) for an
    adapter, merged so the report measures plain weights."""
    from transformers import AutoModelForCausalLM

    if not is_adapter(out_dir):
        return AutoModelForCausalLM.from_pretrained(out_dir, dtype="auto", trust_remote_code=trust_remote_code)
    from peft import PeftModel

    base_path = json.loads((out_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto", trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(base, out_dir).merge_and_unload()


def read_params(params: dict, spec: dict) -> dict:
    """``params`` checked against ``spec`` ({name: (default, check(value) -> error or None)}), with defaults
    filled in; a ConfigError names every bad key as ``scheme_params.NAME``."""
    errors = {f"scheme_params.{name}": f"unknown setting; known: {', '.join(spec) or 'none'}"
              for name in params if name not in spec}
    values = {}
    for name, (default, check) in spec.items():
        value = params.get(name, default)
        if (error := check(value)) is not None:
            errors[f"scheme_params.{name}"] = error
        values[name] = value
    if errors:
        raise ConfigError(errors)
    return values


def run_delta(source: Path, out_dir: Path, ctx, *, scheme: str, settings: dict, compress,
              extra: dict | None = None) -> dict:
    """Compress the change of ``source`` from ``ctx.base_model`` tensor by tensor and write all three outputs.

    ``compress(name, change)`` (fp32 tensor) returns (the change as the
    compressed form reconstructs it, {key suffix: packed tensor}, layout
    entry): the loadable output gets the first (added to the base for a full
    model), the packed file the second under ``name + suffix``. ``extra`` is
    recorded beside the sizes (ComPEFT's α search)."""
    import torch

    from tuning.quantize.common import Cancelled

    base = Path(ctx.base_model).expanduser()
    if reason := check_base(source, ctx.base_model):
        raise ModelError(reason)
    adapter = is_adapter(source)
    deltas = ((name, dtype, change, None) for name, dtype, change in adapter_deltas(source)) if adapter \
        else model_deltas(source, base)
    total = len(read_header(source / ADAPTER_WEIGHTS)) if adapter else len(model_header(source))
    writer = LoadableWriter(source, base, out_dir)
    packed, layout, kept, entries = {}, {}, 0, 0
    try:
        for done, (name, dtype, change, base_tensor) in enumerate(deltas, start=1):
            if ctx.should_stop():
                raise Cancelled
            if not change.is_floating_point() or (base_tensor is None and not adapter):
                writer.write(name, dtype, change)  # nothing to compress: kept as stored
                packed[name, ""] = change
                layout[name] = {"kind": "raw"}
            else:
                restored, parts, entry = compress(name, change)
                writer.write(name, dtype, restored if base_tensor is None else base_tensor + restored)
                packed.update({(name, suffix): part for suffix, part in parts.items()})
                layout[name] = {"shape": list(change.shape), **entry}
                kept += int(torch.count_nonzero(restored))
                entries += change.numel()
            ctx.progress(done, total)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    packed_bytes = write_packed(out_dir, packed, layout, scheme=scheme, settings=settings)
    return write_stats(out_dir, source=source, packed_bytes=packed_bytes, scheme=scheme, settings=settings,
                       nonzero_fraction=round(kept / entries, 4) if entries else None, **(extra or {}))
