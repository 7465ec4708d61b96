"""Reading a sharded checkpoint (torch.distributed.checkpoint, DCP) without
running pickled code, as every other checkpoint file here is read
(``torch.load(weights_only=True)``, safetensors).

DCP's own ``FileSystemReader`` unpickles the ``.metadata`` index with
plain ``pickle.load``, and its default planner reads each non-tensor value
(the optimizer's learning rates, betas …) with torch's unrestricted
unpickler: a tampered checkpoint directory could run code in the worker.
Here the index is unpickled with only DCP's own metadata classes (and
torch's dtypes and sizes) allowed, and the values with
``weights_only=True``. Nothing in this module unpickles anything else.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

# The globals a DCP index refers to (checked on torch 2.13's files); anything else is refused.
ALLOWED_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
ALLOWED_NAMES = {("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
                 ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict")}


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        import torch

        allowed = (module in ALLOWED_MODULES or (module, name) in ALLOWED_NAMES
                   or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)))
        if not allowed:
            raise pickle.UnpicklingError(f"a sharded checkpoint's index refers to {module}.{name}, which is not "
                                         f"part of a DCP index; it is not read")
        return super().find_class(module, name)


def safe_reader(path):
    """A ``FileSystemReader`` for ``path`` whose index is read with the allowed classes only."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as file:
                metadata = _IndexUnpickler(file).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(path)


def safe_planner():
    """DCP's default load planner, reading non-tensor values with ``weights_only=True``."""
    import torch
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:  # the parent's, with weights_only=True
            loaded = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafeLoadPlanner()
