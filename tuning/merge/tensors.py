"""Reading and writing weights one tensor at a time.

A merge never holds a whole model: ``ModelReader`` reads tensor ``k`` from
a (possibly sharded) safetensors directory, ``LoraModelReader`` gives a base
tensor with a LoRA adapter's update already added (B @ A × scaling), and
``ShardWriter`` writes each finished tensor straight to its place in the
output shards. Every tensor read is a fresh copy the merge may change in
place (see ``TensorFile``).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from tuning.errors import ModelError

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} from a safetensors file's JSON header,
    without reading (or mapping) any weights."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            # A damaged file's first 8 bytes can claim a header of exabytes: check before reading it.
            if length > path.stat().st_size - 8:
                raise ValueError(f"the header claims {length} bytes, more than the file holds; the file is damaged")
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise ModelError(f"cannot read the safetensors header of {path}: {exc}") from None
    return {name: (info["dtype"], tuple(info["shape"])) for name, info in header.items() if name != "__metadata__"}


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a model directory (one file, or the shards its index names)."""
    if (directory / WEIGHTS).exists():
        return [directory / WEIGHTS]
    if (directory / WEIGHTS_INDEX).exists():
        index = json.loads((directory / WEIGHTS_INDEX).read_text())
        return [directory / name for name in sorted(set(index["weight_map"].values()))]
    raise ModelError(f"{directory} has no {WEIGHTS} (or {WEIGHTS_INDEX}): merging reads safetensors weights only; "
                     f"re-save the model with save_pretrained(safe_serialization=True)")


def model_header(directory: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} across all shards of a model directory."""
    names = {}
    for file in weight_files(directory):
        names.update(read_header(file))
    return names


def nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count * DTYPE_BYTES.get(dtype, 4)


class TensorFile:
    """Reads single tensors of a safetensors file with plain file reads.

    Not through safetensors' memory map: its tensors share the mapped pages
    (an in-place change to one shows up in the next read of that name), and
    every page read stays in the process's resident memory until the file
    is closed, which across a whole merge adds up to every source's size."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        header.pop("__metadata__", None)
        self._entries = {name: (8 + length + info["data_offsets"][0], info["dtype"], tuple(info["shape"]),
                                info["data_offsets"][1] - info["data_offsets"][0])
                         for name, info in header.items()}

    def keys(self) -> list[str]:
        return list(self._entries)

    def get_tensor(self, name: str):
        """A new tensor that owns its memory."""
        import torch

        offset, dtype, shape, size = self._entries[name]
        data = torch.empty(size, dtype=torch.uint8)
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            if handle.readinto(memoryview(data.numpy())) != size:
                raise ModelError(f"{self.path} is truncated: {name} is incomplete; copy the file again")
        return data.view(torch_dtype_of(dtype)).reshape(shape)


class ModelReader:
    """Tensor-by-tensor access to a model directory's weights."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._where = {}
        for file in weight_files(self.directory):
            tensors = TensorFile(file)
            self._where.update({name: tensors for name in tensors.keys()})
        self.header = model_header(self.directory)

    def names(self) -> list[str]:
        return list(self._where)

    def get(self, name: str, *, raw: bool = False):
        """Tensor ``name`` as a new fp32 tensor (merging arithmetic runs in
        fp32), or as stored with ``raw``."""
        import torch

        tensor = self._where[name].get_tensor(name)
        return tensor if raw else tensor.to(torch.float32)


class LoraModelReader:
    """A base model with a plain LoRA adapter folded in, one tensor at a time.

    Only adapters whose update is exactly ``W + scaling · B @ A`` qualify
    (see ``lora_is_streamable``); others are folded by peft instead.
    """

    def __init__(self, adapter_dir: str | Path, base: ModelReader):
        self.adapter_dir = Path(adapter_dir)
        self.base = base
        config = json.loads((self.adapter_dir / ADAPTER_CONFIG).read_text())
        rank, alpha = config["r"], config["lora_alpha"]
        # rsLoRA scales by alpha / sqrt(r) instead of alpha / r.
        self.scaling = alpha / (rank ** 0.5 if config.get("use_rslora") else rank)
        self.fan_in_fan_out = bool(config.get("fan_in_fan_out"))
        self._adapter = TensorFile(self.adapter_dir / ADAPTER_WEIGHTS)
        self.header = base.header
        self._updates = lora_updates(list(self._adapter.keys()))

    def names(self) -> list[str]:
        return self.base.names()

    def get(self, name: str):
        import torch

        update = self._updates.get(name)
        if update is None:
            return self.base.get(name)
        kind, keys = update
        if kind == "replace":  # a module trained in full (modules_to_save)
            return self._adapter.get_tensor(keys[0]).to(torch.float32)
        a, b = (self._adapter.get_tensor(key).to(torch.float32) for key in keys)
        delta = b @ a
        # Embedding LoRA stores A as (r, vocab) and B as (hidden, r): the update is transposed;
        # fan_in_fan_out layers (GPT-2's Conv1D) store their weight transposed too.
        if kind == "embedding" or self.fan_in_fan_out:
            delta = delta.T
        weight = self.base.get(name)
        return weight.add_(delta, alpha=self.scaling)


def lora_updates(adapter_keys: list[str]) -> dict[str, tuple[str, list[str]]]:
    """Map base tensor names to how the adapter changes them:
    ("linear", [A key, B key]), ("embedding", [A key, B key]) or ("replace", [key]).
    Raises ValueError for a key it does not understand."""
    updates = {}
    for key in adapter_keys:
        name = key.removeprefix(PEFT_PREFIX)
        if name.endswith(".lora_A.weight"):
            module = name.removesuffix(".lora_A.weight")
            updates[f"{module}.weight"] = ("linear", [key, key.replace(".lora_A.", ".lora_B.")])
        elif name.endswith(".lora_embedding_A"):
            module = name.removesuffix(".lora_embedding_A")
            updates[f"{module}.weight"] = ("embedding", [key, key.replace("_embedding_A", "_embedding_B")])
        elif name.endswith((".lora_B.weight", ".lora_embedding_B")):
            continue  # read together with its A
        elif ".modules_to_save." in name or "lora_" not in name:
            updates[name.replace(".modules_to_save", "")] = ("replace", [key])
        else:
            raise ValueError(key)
    return updates


def lora_is_streamable(adapter_dir: Path, base_names: set[str]) -> bool:
    """True when the adapter is a plain LoRA whose every tensor maps onto a
    base tensor, so it can be folded tensor by tensor. DoRA's magnitude
    rescaling, LoRA biases, rank/alpha patterns, layer replication and other
    peft types change more than ``W + s·BA``: those are folded by peft."""
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("lora_bias"):
        return False
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("layer_replication"):
        return False
    if config.get("target_parameters") or not (adapter_dir / ADAPTER_WEIGHTS).exists():
        return False
    try:
        updates = lora_updates(list(read_header(adapter_dir / ADAPTER_WEIGHTS)))
    except ValueError:
        return False
    return set(updates) <= base_names


class ShardWriter:
    """Writes a model's tensors straight to their place in safetensors shards.

    The layout (names, dtypes, shapes) is known before merging starts, so
    every shard's header is written up front and each merged tensor goes to
    its byte offset the moment it is ready, in any order: the writer holds
    no tensors at all. Shards are named and indexed as transformers expects
    once every tensor has been written."""

    def __init__(self, directory: Path, layout: list[tuple[str, str, tuple[int, ...]]], *, max_shard_bytes: int):
        self.directory = directory
        self._place: dict[str, tuple[int, int, int]] = {}  # name -> (shard, absolute offset, bytes)
        shards: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
        size = 0
        for name, dtype, shape in sorted(layout):
            if shards[-1] and size + nbytes(dtype, shape) > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((name, dtype, shape))
            size += nbytes(dtype, shape)
        self._paths = [directory / f"shard-{number:05d}.tmp" for number in range(len(shards))]
        self._names = [[name for name, _, _ in shard] for shard in shards]
        self._handles = [self._start_shard(number, shard) for number, shard in enumerate(shards)]
        self.total_bytes = sum(nbytes(dtype, shape) for _, dtype, shape in layout)

    def _start_shard(self, number: int, tensors: list):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, dtype, shape in tensors:
            end = offset + nbytes(dtype, shape)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, end]}
            offset = end
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        data_start = 8 + len(encoded)
        for name, dtype, shape in tensors:
            begin, end = header[name]["data_offsets"]
            self._place[name] = (number, data_start + begin, end - begin)
        handle = open(self._paths[number], "wb")
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        handle.truncate(data_start + offset)
        return handle

    def write(self, name: str, tensor) -> None:
        import torch

        number, offset, size = self._place[name]
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes != size:
            raise ValueError(f"{name}: {data.nbytes} bytes written into a {size}-byte slot")
        handle = self._handles[number]
        handle.seek(offset)
        handle.write(memoryview(data))
        del self._place[name]

    def close(self) -> None:
        """Give the shards their final names and write the index."""
        for handle in self._handles:
            handle.close()
        if self._place:
            raise ValueError(f"{len(self._place)} tensors were never written, e.g. {next(iter(self._place))}")
        if len(self._paths) == 1:
            os.replace(self._paths[0], self.directory / WEIGHTS)
            return
        count, weight_map = len(self._paths), {}
        for number, (path, names) in enumerate(zip(self._paths, self._names), start=1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            os.replace(path, self.directory / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.directory / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2))

    def abort(self) -> None:
        for handle in self._handles:
            handle.close()


def safetensors_dtype(dtype) -> str:
    import torch

    return {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
            torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
            torch.bool: "BOOL"}[dtype]


def torch_dtype_of(name: str):
    import torch

    return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool}[name]
