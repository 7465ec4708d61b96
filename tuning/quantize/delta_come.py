"""Delta-CoMe (Ping et al., 2024, https://arxiv.org/abs/2406.08903):
mixed-precision compression of a fine-tune's change. Each weight matrix's
change is split by SVD, Δ = U diag(S) Vᵀ, and its singular vectors are
quantized with more bits where the singular values are larger (the paper's
observation: they carry most of the change, and the spectrum has a long
tail): by default the first 2 pairs at 8 bits, the next 32 at 3 bits, the
next 64 at 2 bits, the rest dropped. The singular values stay fp16.

Each singular vector is rounded to its own symmetric grid (one fp16 scale a
vector, 2^(b-1) - 1 levels each side of zero): round-to-nearest, where the
paper uses GPTQ with calibration data. Changes of 1-D tensors (norms,
biases) are stored in fp16 as they are.

A plain LoRA adapter's change per module is B @ A, already of rank r: it is
compressed the same way and written back as a LoRA adapter of the kept rank
(B' = U diag(S), A' = Vᵀ, with lora_alpha set so the scaling is unchanged).
A full fine-tune is written as a full model, base + restored change.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuning.errors import ModelError
from tuning.quantize.common import LOAD_PATH, Cancelled, SchemeContext
from tuning.quantize.delta import (LoadableWriter, check_base, load_output, pack_bits, read_packed, read_params,
                                   run_delta, unpack_bits, write_packed, write_stats)

FORMAT = "safetensors+deltacome"  # the artifact row keeps 20 characters
HOW_TO_LOAD = (f'AutoModelForCausalLM.from_pretrained("{LOAD_PATH}")  # an adapter output needs peft; '
               f'delta_packed.safetensors holds the packed change')
PAPER = ("Delta-CoMe: Training-Free Delta-Compression with Mixed-Precision for Large Language Models "
         "(Ping et al., 2024), https://arxiv.org/abs/2406.08903")
BITS = (8, 3, 2)  # the precision of each group of singular vectors, largest singular values first


def _count(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65536:
        return "must be a whole number of singular vectors from 0 to 65536"
    return None


PARAMS = {"rank_8bit": (2, _count), "rank_3bit": (32, _count), "rank_2bit": (64, _count)}
# What each preset trades; sizes are (rows + columns) × (8·r₈ + 3·r₃ + 2·r₂) bits a matrix, here for a
# 4096 × 4096 one against its 32 MiB fp16 change.
PRESETS = {
    "smallest": {"settings": {"rank_8bit": 2, "rank_3bit": 16, "rank_2bit": 32},
                 "trade": "half the default's singular vectors: 0.12 MiB a 4096² matrix (1/256 of fp16), more of the "
                          "change's tail lost"},
    "balanced": {"settings": {"rank_8bit": 2, "rank_3bit": 32, "rank_2bit": 64},
                 "trade": "the defaults: 0.23 MiB a 4096² matrix (1/136 of fp16)"},
    "paper budget": {"settings": {"rank_8bit": 8, "rank_3bit": 128, "rank_2bit": 800},
                     "trade": "about the paper's 1/16 of fp16 (2 MiB a 4096² matrix): the closest to the fine-tune, "
                              "8.5 times the default's size"},
}


def check_params(params: dict) -> dict:
    from tuning.errors import ConfigError

    values = read_params(params, PARAMS)
    if not any(values.values()):
        raise ConfigError({"scheme_params.rank_8bit": "keep at least one singular vector (all three counts are 0)"})
    return values


def unavailable_reason() -> str | None:
    return None


def groups_for(settings: dict, rank: int) -> list[tuple[int, int]]:
    """[(bits, count)] of the singular vectors kept for a matrix of ``rank``, largest first."""
    groups, left = [], rank
    for bits, wanted in zip(BITS, (settings["rank_8bit"], settings["rank_3bit"], settings["rank_2bit"])):
        count = min(wanted, left)
        if count:
            groups.append((bits, count))
        left -= count
    return groups


def quantize_vectors(vectors, bits: int):
    """(codes as unsigned ints, per-column fp16 scales, the dequantized vectors) of each column of ``vectors``."""
    import torch

    top = 2 ** (bits - 1) - 1
    scales = (vectors.abs().amax(dim=0) / top).to(torch.float16)
    safe = torch.where(scales == 0, torch.ones_like(scales), scales).to(torch.float32)
    signed = torch.clamp(torch.round(vectors / safe), -top, top)
    return (signed + top).to(torch.int64), scales, signed * scales.to(torch.float32)


def dequantize_vectors(codes, scales, bits: int, shape: tuple[int, int]):
    top = 2 ** (bits - 1) - 1
    return (codes.reshape(shape).to(scales.dtype).float() - top) * scales.float()


def delta_come(delta, groups: list[tuple[int, int]]):
    """(U_q diag(S), V_q, packed parts) of a 2-D change: its restored factors and what is stored."""
    import torch

    u, s, vh = torch.linalg.svd(delta.to(torch.float64), full_matrices=False)
    u, s, v = u.to(torch.float32), s.to(torch.float16), vh.T.to(torch.float32)
    parts, restored_u, restored_v, start = {".s": s[:sum(count for _, count in groups)].clone()}, [], [], 0
    for index, (bits, count) in enumerate(groups):
        for side, vectors, restored in (("u", u, restored_u), ("v", v, restored_v)):
            codes, scales, values = quantize_vectors(vectors[:, start:start + count], bits)
            parts[f".{side}{index}"], parts[f".{side}{index}.scale"] = pack_bits(codes, bits), scales
            restored.append(values)
        start += count
    kept = parts[".s"].float()
    return torch.cat(restored_u, dim=1) * kept, torch.cat(restored_v, dim=1), parts


def _restore(tensors: dict, name: str, entry: dict):
    """(U_q diag(S), V_q) of one packed change."""
    import torch

    rows, cols = entry["shape"] if entry["kind"] == "matrix" else entry["factor_shape"]
    us, vs = [], []
    for index, (bits, count) in enumerate(entry["groups"]):
        for side, size, out in (("u", rows, us), ("v", cols, vs)):
            codes = unpack_bits(tensors[f"{name}.{side}{index}"], bits, size * count)
            out.append(dequantize_vectors(codes, tensors[f"{name}.{side}{index}.scale"], bits, (size, count)))
    return torch.cat(us, dim=1) * tensors[f"{name}.s"].float(), torch.cat(vs, dim=1)


def _compress_matrix(settings: dict):
    import torch

    def compress(name: str, delta):
        if delta.dim() != 2:  # norms and biases: small, kept in fp16
            return delta.to(torch.float16).float(), {".fp16": delta.to(torch.float16)}, {"kind": "fp16"}
        groups = groups_for(settings, min(delta.shape))
        us, v, parts = delta_come(delta, groups)
        return us @ v.T, parts, {"kind": "matrix", "groups": groups}
    return compress


def _check_adapter(adapter: Path) -> dict:
    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("rank_pattern") \
            or config.get("alpha_pattern") or config.get("lora_bias"):
        raise ModelError("Delta-CoMe compresses a plain LoRA adapter (one rank, no DoRA) or a full fine-tune; fold "
                         "this adapter into its base first (merge method 'fold') and compress the folded model")
    return config


def _run_adapter(adapter: Path, out_dir: Path, ctx: SchemeContext, settings: dict) -> dict:
    """Each LoRA module's B @ A compressed and written back as a LoRA adapter of the kept rank."""
    import torch

    from tuning.merge.tensors import ADAPTER_WEIGHTS, TensorFile, lora_updates, read_header

    config = _check_adapter(adapter)
    scaling = config["lora_alpha"] / (config["r"] ** 0.5 if config.get("use_rslora") else config["r"])
    tensors, header = TensorFile(adapter / ADAPTER_WEIGHTS), read_header(adapter / ADAPTER_WEIGHTS)
    updates = lora_updates(list(header))
    writer = LoadableWriter(adapter, Path(ctx.base_model).expanduser(), out_dir)
    packed, layout, ranks = {}, {}, set()
    for done, (module, (kind, keys)) in enumerate(updates.items(), start=1):
        if ctx.should_stop():
            raise Cancelled
        if kind == "replace":  # a module trained in full (modules_to_save): kept as stored
            writer.write(keys[0], header[keys[0]][0], tensors.get_tensor(keys[0]))
            packed[keys[0], ""], layout[keys[0]] = tensors.get_tensor(keys[0]), {"kind": "raw"}
            continue
        a, b = (tensors.get_tensor(key).to(torch.float32) for key in keys)
        groups = groups_for(settings, min(b.shape[0], a.shape[1], a.shape[0]))
        us, v, parts = delta_come(b @ a, groups)
        writer.write(keys[0], header[keys[0]][0], v.T)  # A' = V_qᵀ (rank x in), B' = U_q diag(S) (out x rank)
        writer.write(keys[1], header[keys[1]][0], us)
        packed.update({(module, suffix): part for suffix, part in parts.items()})
        layout[module] = {"kind": "lora", "keys": keys, "groups": groups, "factor_shape": [b.shape[0], a.shape[1]]}
        ranks.add(us.shape[1])
        ctx.progress(done, len(updates))
    if len(ranks) > 1:
        raise ModelError(f"the adapter's modules would keep different ranks ({sorted(ranks)}); give rank counts "
                         f"whose sum is at most the adapter's rank {config['r']}")
    writer.close()
    rank = ranks.pop() if ranks else config["r"]
    written = json.loads((out_dir / "adapter_config.json").read_text())
    # the same scaling at the kept rank: peft multiplies B'A' by lora_alpha / r
    written.update(r=rank, lora_alpha=scaling * rank, use_rslora=False)
    (out_dir / "adapter_config.json").write_text(json.dumps(written, indent=2))
    packed_bytes = write_packed(out_dir, packed, layout, scheme="delta_come", settings=settings)
    return write_stats(out_dir, source=adapter, packed_bytes=packed_bytes, scheme="delta_come", settings=settings,
                       kept_rank=rank)


def run(source_dir: Path, out_dir: Path, ctx: SchemeContext) -> None:
    settings = check_params(ctx.params)
    if (source_dir / "adapter_config.json").exists():
        if reason := check_base(source_dir, ctx.base_model):
            raise ModelError(reason)
        stats = _run_adapter(source_dir, out_dir, ctx, settings)
    else:
        stats = run_delta(source_dir, out_dir, ctx, scheme="delta_come", settings=settings,
                          compress=_compress_matrix(settings))
    ctx.log(f"Delta-CoMe: packed change {stats['delta_bytes_after'] / 2**20:.2f} MiB (was "
            f"{stats['delta_bytes_before'] / 2**20:.2f} MiB)")


def unpack_delta(path: Path) -> dict:
    """{tensor name: fp32 tensor} from a packed file: a full model's restored
    changes, or an adapter's restored A' and B' (raw tensors as stored)."""
    tensors, layout, _ = read_packed(path)
    changes = {}
    for name, entry in layout.items():
        if entry["kind"] == "raw":
            changes[name] = tensors[name]
        elif entry["kind"] == "fp16":
            changes[name] = tensors[name + ".fp16"].float()
        elif entry["kind"] == "matrix":
            us, v = _restore(tensors, name, entry)
            changes[name] = us @ v.T
        else:  # a LoRA module: its A' and B'
            us, v = _restore(tensors, name, entry)
            changes[entry["keys"][0]], changes[entry["keys"][1]] = v.T.contiguous(), us
    return changes


def load(out_dir: Path, *, trust_remote_code: bool = False):
    return load_output(out_dir, trust_remote_code=trust_remote_code)
