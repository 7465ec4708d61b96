"""ComPEFT (Yadav et al., 2023, https://arxiv.org/abs/2311.13171): compress a
task vector (an adapter's parameters, or a full fine-tune's change from its
base) by keeping only its largest entries and replacing each kept entry by
its sign times one scale:

    compressed = alpha * std(tau) * sign(tau) * topk_mask(|tau|, density)

std is the population standard deviation of the whole tensor (not only the
kept entries), as in the paper; ``alpha`` is the paper's scale
hyperparameter (it tunes it on validation data; 1.0 is where it starts):
with ``alpha_grid`` each candidate is scored by loss on a validation split
(``compeft_search``) and the best one is written.
Each tensor gets its own top-k and scale: LoRA's A and B, an embedding and a
norm differ in scale by orders of magnitude, and one scale for all of them
would ternarise the small ones to noise. Stored packed, a tensor of n
entries costs n bits (the mask) + k bits (the kept signs) + one float, about
1/16 of fp16 at density 0.1 before any entropy coding (the paper's Golomb
coding would shrink the mask further).
"""

from __future__ import annotations

from pathlib import Path

from tuning.quantize.common import LOAD_PATH, SchemeContext
from tuning.quantize.delta import load_output, pack_bits, read_packed, read_params, run_delta, unpack_bits

FORMAT = "safetensors+compeft"  # the artifact row keeps 20 characters
HOW_TO_LOAD = (f'AutoModelForCausalLM.from_pretrained("{LOAD_PATH}")  # an adapter output needs peft; '
               f'delta_packed.safetensors holds the packed change')
PAPER = ("ComPEFT: Compression for Communicating Parameter Efficient Updates via Sparsification and Quantization "
         "(Yadav et al., 2023), https://arxiv.org/abs/2311.13171")


def _fraction(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        return "must be a number above 0 and at most 1 (the fraction of each tensor's entries kept)"
    return None


def _positive(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return "must be a number above 0 (the scale of the kept entries, in standard deviations)"
    return None


def _grid(value) -> str | None:
    if parse_grid(value) is None:
        return ("must be empty (no search) or α values above 0 separated by commas, e.g. 0.5, 1, 2, 4 (each is "
                "scored on the validation split and the one with the lowest loss is written)")
    return None


def parse_grid(value) -> list[float] | None:
    """The α values of ``alpha_grid`` (a number, a list, or a comma-separated text; empty: []), None if invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        value = [value]
    elif isinstance(value, str):
        value = [part for part in value.replace(";", ",").split(",") if part.strip()]
    if not isinstance(value, list):
        return None
    try:
        grid = [float(part) for part in value]
    except (TypeError, ValueError):
        return None
    if len(grid) > MAX_GRID or not all(0 < alpha < float("inf") for alpha in grid):
        return None
    return list(dict.fromkeys(grid))


MAX_GRID = 16  # candidates: each is one pass over the validation rows
PARAMS = {"density": (0.1, _fraction), "alpha": (1.0, _positive), "alpha_grid": ("", _grid)}
# What each preset trades. The mask costs one bit an entry whatever the density, so density trades fidelity far
# more than size: packed, 0.05 is about 1/15 of fp16, 0.1 about 1/14.5, 0.3 about 1/12.
PRESETS = {
    "smallest": {"settings": {"density": 0.05, "alpha": 1.0, "alpha_grid": ""},
                 "trade": "keeps 5% of each tensor's change: the smallest file (about 1/15 of fp16), the most of the "
                          "fine-tune's gain lost"},
    "balanced": {"settings": {"density": 0.1, "alpha": 1.0, "alpha_grid": ""},
                 "trade": "keeps 10%: about 1/14 of fp16; α left at 1, which may be too small (search α to check)"},
    "faithful": {"settings": {"density": 0.3, "alpha": 1.0, "alpha_grid": ""},
                 "trade": "keeps 30%: about 1/12 of fp16, closer to the fine-tune, little bigger"},
    "search α": {"settings": {"density": 0.1, "alpha": 1.0, "alpha_grid": "0.5, 1, 2, 4, 8"},
                 "trade": "as balanced, but α is picked from 0.5–8 by loss on a validation split you choose, as in "
                          "the paper: one pass over it per candidate, needs the split"},
}


def check_params(params: dict) -> dict:
    values = read_params(params, PARAMS)
    values["alpha_grid"] = ", ".join(f"{alpha:g}" for alpha in parse_grid(values["alpha_grid"]))
    return values


def unavailable_reason() -> str | None:
    return None


def compeft(tau, *, density: float, alpha: float):
    """(compressed tensor, kept mask, scale) of one task-vector tensor ``tau`` (fp32)."""
    import torch

    flat = tau.reshape(-1)
    k = max(1, round(density * flat.numel()))
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[torch.topk(flat.abs(), k, sorted=False).indices] = True  # exactly k entries, ties broken by topk
    scale = alpha * flat.std(correction=0).item()
    compressed = torch.where(mask, torch.sign(flat) * scale, torch.zeros_like(flat))
    return compressed.reshape(tau.shape), mask.reshape(tau.shape), scale


def _compress(density: float, alpha: float):
    import torch

    def compress(name: str, tau):
        compressed, mask, scale = compeft(tau, density=density, alpha=alpha)
        signs = (tau[mask] > 0).to(torch.uint8)
        parts = {".mask": pack_bits(mask.to(torch.uint8), 1), ".sign": pack_bits(signs, 1),
                 ".scale": torch.tensor([scale], dtype=torch.float32)}
        return compressed, parts, {"kind": "compeft", "kept": int(mask.sum())}
    return compress


def run(source_dir: Path, out_dir: Path, ctx: SchemeContext) -> None:
    settings = check_params(ctx.params)
    extra = {}
    if grid := parse_grid(settings["alpha_grid"]):
        from tuning.quantize.compeft_search import search_alpha

        unit_change = lambda tau: compeft(tau, density=settings["density"], alpha=1.0)[0]  # noqa: E731
        extra["alpha_search"] = search = search_alpha(source_dir, ctx, unit_change=unit_change, grid=grid)
        settings = {**settings, "alpha": search["chosen"]}
    stats = run_delta(source_dir, out_dir, ctx, scheme="compeft", settings=settings,
                      compress=_compress(settings["density"], settings["alpha"]), extra=extra)
    ctx.log(f"ComPEFT kept {stats['nonzero_fraction']:.1%} of the change's entries; packed change "
            f"{stats['delta_bytes_after'] / 2**20:.2f} MiB (was {stats['delta_bytes_before'] / 2**20:.2f} MiB)")


def unpack_delta(path: Path) -> dict:
    """{tensor name: the compressed change as fp32} from a packed file (raw tensors as stored)."""
    import torch

    tensors, layout, _ = read_packed(path)
    changes = {}
    for name, entry in layout.items():
        if entry["kind"] == "raw":
            changes[name] = tensors[name]
            continue
        count = 1
        for size in entry["shape"]:
            count *= size
        mask = unpack_bits(tensors[name + ".mask"], 1, count).bool()
        signs = unpack_bits(tensors[name + ".sign"], 1, entry["kept"]).to(torch.float32) * 2 - 1
        values = torch.zeros(count)
        values[mask] = signs * tensors[name + ".scale"].item()
        changes[name] = values.reshape(entry["shape"])
    return changes


def load(out_dir: Path, *, trust_remote_code: bool = False):
    return load_output(out_dir, trust_remote_code=trust_remote_code)
