"""MoS: Mixture of Shards (Wang et al., 2024, "MoS: Unleashing Parameter
Efficiency of Low-Rank Adaptation with Mixture of Shards", arXiv:2410.00938).
peft 0.21 has no MoS, so the layers are wrapped here (``tuning.methods.wrapped``).

Every layer keeps LoRA's form, W x + (α / r) B A x, but its A (r × in) and
B (out × r) are not its own parameters: they are assembled from shards held
in global pools shared by all the layers of one kind (all q_proj, all
down_proj …), with the paper's four differentiation strategies:

- vector sharding: each row of A (column of B) is l shards of length in / l
  (out / l) concatenated, so a matrix fills r·l shard slots;
- subset selection: each layer's slots take a seeded random subset of the
  pool (no shard twice in one matrix), its own index matrix;
- pair dissociation: A and B draw their shards with independent index
  matrices, so a row of A is not tied to one column of B
  (``dissociate_pairs``);
- shard privatisation: ``private_shards`` of each layer's slots per side take
  shards that no other layer uses; the rest come from the public part.

The paper's "MoE-like router" is this index-based retrieval: which shards a
layer takes is fixed before training, not chosen per input, so the update
stays linear. A pool holds as many parameters as LoRA of rank ``pool_rank``
on the layers sharing it (L · pool_rank · l shards a side), so MoS trains what
LoRA at ``pool_rank`` trains while every layer gets rank ``rank``.

Because routing does not depend on the input, each layer's B A is exact and
the export writes it out as a plain peft LoRA adapter of rank ``rank``: it
loads with ``PeftModel.from_pretrained``, folds, merges and quantizes like any
LoRA adapter. The index matrices come from ``seed`` and the model's shape, so
a resumed run rebuilds the same layers and its checkpoints need only the pools.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuning.errors import ConfigError
from tuning.fields import config_to_dict, setting
from tuning.methods.common import dropout_setting, peft_task_type, presets, target_modules_setting
from tuning.methods.wrapped import block_linears, swap_in, train_wrappers, wrapped_problems

POOLS = "mos_pools"  # the model attribute holding the global pools (one ParameterDict)


@dataclass(frozen=True, kw_only=True)
class MosParams:
    rank: int = setting(8, min=1, max=1024, basic=True, label="Rank per layer",
                        help="Rank r of each layer's assembled low-rank pair (r·l shard slots a side).")
    pool_rank: int = setting(2, min=1, max=1024, basic=True, label="Pool size (as a LoRA rank)",
                             help="The trainable budget: each global pool holds as many parameters as LoRA of this "
                                  "rank on the layers that share it; MoS trains that many while every layer gets "
                                  "the rank above (the paper: about 8× fewer parameters than LoRA).")
    shards_per_vector: int = setting(2, min=1, max=256, label="Shards per vector l",
                                     help="Vector sharding: each row of A and column of B is this many shards "
                                          "concatenated; must divide every targeted layer's widths.")
    private_shards: int = setting(1, min=0, max=4096, label="Private shards per layer",
                                  help="Shard privatisation: this many of each layer's slots a side take shards no "
                                       "other layer uses (at most pool rank × l); the rest are shared.")
    dissociate_pairs: bool = setting(True, label="Dissociate pairs",
                                     help="Pair dissociation: A and B pick their shards independently; off, B reuses "
                                          "A's index matrix.")
    alpha: float = setting(16.0, min=0.0, max=4096.0, label="Alpha", help="The update is scaled by alpha / rank.")
    dropout: float = dropout_setting(0.0)
    target_modules: str = target_modules_setting()
    seed: int = setting(0, min=0, max=2**31 - 1,
                        help="Seeds the index matrices (which shards each layer takes).")


PRESETS = presets(quick=(0.002, {"rank": 8, "pool_rank": 2}), balanced=(0.001, {"rank": 8, "pool_rank": 2}),
                  thorough=(0.0005, {"rank": 16, "pool_rank": 4}))


def assemble(pool, index):
    """The matrix whose row i is the shards ``pool[index[i, 0]] … pool[index[i, l-1]]``
    concatenated: (r, l · shard length). A is this; B is its transpose."""
    return pool[index].reshape(index.shape[0], -1)


def index_matrices(layers: int, *, rank: int, shards: int, private: int, pool_rank: int, generator) -> list:
    """One (rank, shards) index matrix per layer into a pool of ``layers ·
    pool_rank · shards`` shards: the public ones first, then each layer's
    ``private`` own. Each layer takes all its private shards and a random
    subset of the public ones, in random slots; no shard twice in a matrix."""
    import torch

    slots = rank * shards
    public = layers * (pool_rank * shards - private)
    matrices = []
    for layer in range(layers):
        own = torch.arange(public + layer * private, public + (layer + 1) * private)
        chosen = torch.cat([own, torch.randperm(public, generator=generator)[:slots - private]])
        matrices.append(chosen[torch.randperm(slots, generator=generator)].reshape(rank, shards))
    return matrices


def _sharded_class():
    from torch import nn

    class Sharded(nn.Module):
        """A frozen linear layer plus (α / r) B A, A and B assembled from
        shared pools (held here without registering them twice)."""

        def __init__(self, base: nn.Linear, pools, keys: tuple[str, str], index_a, index_b, scaling: float,
                     dropout: float):
            super().__init__()
            self.base, self._pools, self.mos_keys, self.scaling = base, [pools], keys, scaling
            self.register_buffer("mos_index_a", index_a, persistent=False)  # rebuilt from the seed
            self.register_buffer("mos_index_b", index_b, persistent=False)
            self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

        def lora_a(self):
            return assemble(self._pools[0][self.mos_keys[0]], self.mos_index_a)

        def lora_b(self):
            return assemble(self._pools[0][self.mos_keys[1]], self.mos_index_b).T

        def forward(self, x):
            update = self.dropout(x) @ self.lora_a().T.to(x.dtype) @ self.lora_b().T.to(x.dtype)
            return self.base(x) + self.scaling * update

        def folded(self) -> nn.Linear:
            weight = self.base.weight
            delta = self.scaling * (self.lora_b() @ self.lora_a())
            self.base.weight.data = (weight.float() + delta.float()).to(weight.dtype)
            return self.base

    return Sharded


def _pool_key(side: str, name: str, layer) -> str:
    """Layers of one kind and shape share a pool: ``A_q_proj_576x576``."""
    return f"{side}_{name.rpartition('.')[2]}_{layer.in_features}x{layer.out_features}"


def _refusals(groups: dict, params: MosParams) -> None:
    l, r, private = params.shards_per_vector, params.rank, params.private_shards
    if private > params.pool_rank * l:
        raise ConfigError({"private_shards": f"{private} is more than a layer's share of its pool (pool rank "
                                             f"{params.pool_rank} × {l} shards per vector = {params.pool_rank * l})"})
    if private > r * l:
        raise ConfigError({"private_shards": f"{private} is more than a layer's {r * l} slots (rank × shards per "
                                             f"vector)"})
    for names in groups.values():
        public = len(names) * (params.pool_rank * l - private)
        if public < r * l - private:
            raise ConfigError({"pool_rank": f"the {len(names)} layers like {names[0]} share {public} public shards a "
                                            f"side, fewer than the {r * l - private} each draws without repeats; "
                                            f"raise the pool rank or the private shards, or lower the rank"})


def prepare(model, params: MosParams, context=None):
    import torch
    from torch import nn

    names = block_linears(model, params.target_modules)
    l = params.shards_per_vector
    groups: dict[str, list[str]] = {}
    for name in names:
        layer = model.get_submodule(name)
        for width in (layer.in_features, layer.out_features):
            if width % l:
                raise ConfigError({"shards_per_vector": f"{l} does not divide the width {width} of {name}; choose "
                                                        f"a divisor of every targeted layer's widths"})
        groups.setdefault(_pool_key("A", name, layer), []).append(name)
    _refusals(groups, params)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(params.seed)
    pools, indices = nn.ParameterDict(), {}
    for key, members in groups.items():
        first = model.get_submodule(members[0])
        size = len(members) * params.pool_rank * l
        a = torch.empty(size, first.in_features // l, device=device)
        nn.init.uniform_(a, -1 / math.sqrt(first.in_features), 1 / math.sqrt(first.in_features))  # LoRA's A init
        b_key = key.replace("A_", "B_", 1)
        pools[key], pools[b_key] = nn.Parameter(a), nn.Parameter(torch.zeros(size, first.out_features // l,
                                                                             device=device))
        draw = dict(rank=params.rank, shards=l, private=params.private_shards, pool_rank=params.pool_rank,
                    generator=generator)
        a_index = index_matrices(len(members), **draw)
        b_index = index_matrices(len(members), **draw) if params.dissociate_pairs else a_index
        indices |= {name: (key, b_key, a_index[i], b_index[i]) for i, name in enumerate(members)}
    setattr(model, POOLS, pools)
    sharded = _sharded_class()
    scaling = params.alpha / params.rank

    def wrap(name, layer):
        key, b_key, a_index, b_index = indices[name]
        return sharded(layer, pools, (key, b_key), a_index.to(device), b_index.to(device), scaling, params.dropout)

    wrappers = swap_in(model, names, wrap)
    model.mos_settings = {**config_to_dict(params), "task_type": peft_task_type(context)}  # read by ``export``
    return train_wrappers(model, wrappers, context, also=frozenset(f"{POOLS}.{key}" for key in pools))


def export(model, directory) -> None:
    """Write each layer's assembled pair as a plain peft LoRA adapter (rank
    ``rank``), putting the plain linear layers back under peft's own; the
    model goes on computing the same function."""
    import torch
    from peft import LoraConfig, get_peft_model

    settings = model.mos_settings
    pairs = {}
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if hasattr(module, "mos_index_a"):
                pairs[name] = (module.lora_a().detach().clone(), module.lora_b().detach().clone())
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, module.base)
    delattr(model, POOLS)
    config = LoraConfig(r=settings["rank"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                        target_modules=sorted(pairs), task_type=settings["task_type"])
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, (a, b) in pairs.items():
            layer = peft_model.base_model.model.get_submodule(name)
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b)
    peft_model.save_pretrained(directory, safe_serialization=True)


def check(params: MosParams, model_config, task: str) -> dict[str, str]:
    return wrapped_problems(prepare, params, model_config, task)
