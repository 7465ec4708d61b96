"""GGUF k-quant writers (Q4_K, Q5_K, Q6_K) in numpy, and llama.cpp's mixes
Q4_K_M and Q5_K_M.

The pinned ``gguf`` package (0.19.0) reads these block formats
(``gguf.quants.dequantize``) but cannot write them, so the writers here port
llama.cpp's reference quantizers (ggml-quants.c: ``quantize_row_q4_K_ref``,
``quantize_row_q5_K_ref``, ``quantize_row_q6_K_ref`` with
``make_qkx2_quants`` and ``make_qx_quants``), vectorised over all blocks
of a tensor. Their bytes are checked by reading them back with gguf's own
dequantizer (tests/core/test_gguf_kquants.py).

Which tensor gets which type follows llama.cpp's ``llama_tensor_get_type``
for these file types: the output head (or the tied embedding) in Q6_K;
in the _M mixes, attn_v and ffn_down in Q6_K on the first and last eighth of
the layers and every third layer between; rows whose length is not a
multiple of 256 fall back to Q5_0 (Q4_K), Q5_1 (Q5_K) or Q8_0 (Q6_K).
"""

from __future__ import annotations

import re

QK_K = 256
# file type -> (the type of most matrices, the type of the "more bits" ones)
K_MIXES = {"q4_k_m": ("Q4_K", "Q6_K"), "q5_k_m": ("Q5_K", "Q6_K"), "q6_k": ("Q6_K", "Q6_K")}
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}  # rows not a multiple of 256


def _use_more_bits(layer: int, n_layers: int) -> bool:
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def k_quant_type(gguf_type: str, name: str, shape: tuple[int, ...], n_layers: int, output_names: tuple[str, ...]):
    """The GGML type name of tensor ``name`` (a GGUF name) in a ``gguf_type`` file."""
    base, more = K_MIXES[gguf_type]
    kind = base
    if name in output_names:
        kind = "Q6_K"
    elif re.match(r"blk\.\d+\.(attn_v|ffn_down)\.weight$", name):
        layer = int(name.split(".")[1])
        if _use_more_bits(layer, n_layers):
            kind = more
    return kind if shape[-1] % QK_K == 0 else FALLBACK[kind]


def _nearest(values):
    import numpy as np

    return np.rint(values).astype(np.int32)  # half to even, as ggml's nearest_int


def _make_qkx2_quants(x, weights, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Per row of ``x`` (rows of 32): (scale, min as a positive offset, levels 0..nmax), minimising the weighted
    squared error over a search of ``nstep`` scales (ggml's make_qkx2_quants, use_mad false)."""
    import numpy as np

    low = np.minimum(x.min(axis=1), 0)
    high = x.max(axis=1)
    span = high - low
    flat = span == 0
    span = np.where(flat, 1, span)
    sum_w = weights.sum(axis=1)
    sum_x = (weights * x).sum(axis=1)
    iscale = nmax / span
    levels = np.clip(_nearest(iscale[:, None] * (x - low[:, None])), 0, nmax)
    scale = 1 / iscale
    best = (weights * (scale[:, None] * levels + low[:, None] - x) ** 2).sum(axis=1)
    minimum = low.copy()
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * step + nmax) / span
        trial = np.clip(_nearest(iscale[:, None] * (x - low[:, None])), 0, nmax).astype(np.float32)
        sum_l = (weights * trial).sum(axis=1)
        sum_l2 = (weights * trial * trial).sum(axis=1)
        sum_xl = (weights * trial * x).sum(axis=1)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        safe = np.where(ok, det, 1)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe
        positive = this_min > 0
        this_scale = np.where(positive, sum_xl / np.where(sum_l2 > 0, sum_l2, 1), this_scale)
        this_min = np.where(positive, 0, this_min)
        error = (weights * (this_scale[:, None] * trial + this_min[:, None] - x) ** 2).sum(axis=1)
        better = ok & (error < best)
        levels = np.where(better[:, None], trial, levels)
        best = np.where(better, error, best)
        scale = np.where(better, this_scale, scale)
        minimum = np.where(better, this_min, minimum)
    scale = np.where(flat, 0, scale)
    levels = np.where(flat[:, None], 0, levels)
    return scale.astype(np.float32), (-minimum).astype(np.float32), levels


def _make_qx_quants(x, nmax: int):
    """Per row of ``x`` (rows of 16): the signed scale of ggml's make_qx_quants with rmse_type 1 (weights x²)."""
    import numpy as np

    index = np.abs(x).argmax(axis=1)
    peak = x[np.arange(len(x)), index]
    tiny = np.abs(peak) < 1e-15
    peak = np.where(tiny, 1, peak)
    weights = x * x

    def fit(iscale):
        levels = np.clip(_nearest(iscale[:, None] * x), -nmax, nmax - 1).astype(np.float32)
        return (weights * x * levels).sum(axis=1), (weights * levels * levels).sum(axis=1)

    sum_lx, sum_l2 = fit(-nmax / peak)
    scale = np.where(sum_l2 > 0, sum_lx / np.where(sum_l2 > 0, sum_l2, 1), 0)
    best = scale * sum_lx
    for step in range(-9, 10):
        if step == 0:
            continue
        sum_lx, sum_l2 = fit(-(nmax + 0.1 * step) / peak)
        better = (sum_l2 > 0) & (sum_lx * sum_lx > best * sum_l2)
        scale = np.where(better, sum_lx / np.where(sum_l2 > 0, sum_l2, 1), scale)
        best = np.where(better, scale * sum_lx, best)
    return np.where(tiny, 0, scale).astype(np.float32)


def _fp16(values):
    import numpy as np

    return np.asarray(values, dtype=np.float32).astype(np.float16)


def _scales_and_mins(x, nmax: int, rmin: float, nstep: int):
    """The shared first half of Q4_K and Q5_K: per block (d, dmin, 12 packed scale bytes, per-32 scale and min)."""
    import numpy as np

    blocks = x.shape[0]
    rows = x.reshape(-1, 32)
    average = np.sqrt((rows * rows).mean(axis=1))
    weights = average[:, None] + np.abs(rows)
    scales, mins, _ = _make_qkx2_quants(rows, weights, nmax, rmin, 0.1, nstep)
    scales, mins = scales.reshape(blocks, 8), mins.reshape(blocks, 8)
    max_scale, max_min = scales.max(axis=1), mins.max(axis=1)
    inv_scale = np.where(max_scale > 0, 63 / np.where(max_scale > 0, max_scale, 1), 0)
    inv_min = np.where(max_min > 0, 63 / np.where(max_min > 0, max_min, 1), 0)
    ls = np.minimum(63, _nearest(inv_scale[:, None] * scales)).astype(np.uint8)
    lm = np.minimum(63, _nearest(inv_min[:, None] * mins)).astype(np.uint8)
    packed = np.zeros((blocks, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    d, dmin = _fp16(max_scale / 63), _fp16(max_min / 63)
    sub_d = d.astype(np.float32)[:, None] * ls
    sub_m = dmin.astype(np.float32)[:, None] * lm
    return d, dmin, packed, sub_d, sub_m


def _levels(x, sub_d, sub_m, nmax: int):
    import numpy as np

    groups = x.reshape(x.shape[0], 8, 32)
    safe = np.where(sub_d == 0, 1, sub_d)[..., None]
    levels = np.clip(_nearest((groups + sub_m[..., None]) / safe), 0, nmax)
    return np.where(sub_d[..., None] == 0, 0, levels).astype(np.uint8).reshape(x.shape[0], QK_K)


def quantize_q4_k(x):
    """float32 [blocks, 256] -> the bytes of Q4_K blocks [blocks, 144]."""
    import numpy as np

    d, dmin, scales, sub_d, sub_m = _scales_and_mins(x, 15, -1.0, 20)
    levels = _levels(x, sub_d, sub_m, 15).reshape(-1, 4, 2, 32)
    qs = (levels[:, :, 0] | (levels[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), scales, qs], axis=1)


def quantize_q5_k(x):
    """float32 [blocks, 256] -> the bytes of Q5_K blocks [blocks, 176]."""
    import numpy as np

    d, dmin, scales, sub_d, sub_m = _scales_and_mins(x, 31, -0.5, 15)
    levels = _levels(x, sub_d, sub_m, 31).reshape(-1, 4, 2, 32)
    low, high = levels & 0xF, levels >> 4
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    # bit 2n of qh[j] is the fifth bit of value j of group 2n, bit 2n+1 of group 2n+1
    qh = np.zeros((x.shape[0], 32), dtype=np.uint8)
    for pair in range(4):
        qh |= (high[:, pair, 0] << (2 * pair)) | (high[:, pair, 1] << (2 * pair + 1))
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), scales, qh, qs],
                          axis=1)


def quantize_q6_k(x):
    """float32 [blocks, 256] -> the bytes of Q6_K blocks [blocks, 210]."""
    import numpy as np

    blocks = x.shape[0]
    sub = x.reshape(-1, 16)
    scales = _make_qx_quants(sub, 32).reshape(blocks, 16)
    index = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(blocks), index]
    empty = np.abs(max_scale) < 1e-15
    iscale = np.where(empty, 0, -128 / np.where(empty, 1, max_scale))
    d = _fp16(np.where(empty, 0, 1 / np.where(iscale == 0, 1, iscale)))
    q_scales = np.minimum(127, _nearest(iscale[:, None] * scales)).astype(np.int8)
    sub_d = d.astype(np.float32)[:, None] * q_scales
    safe = np.where(sub_d == 0, 1, sub_d)[..., None]
    levels = np.clip(_nearest(x.reshape(blocks, 16, 16) / safe), -32, 31) + 32
    levels = np.where(sub_d[..., None] == 0, 32, levels).astype(np.uint8).reshape(blocks, 2, 4, 32)
    low, high = levels & 0xF, levels >> 4
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    return np.concatenate([ql.reshape(blocks, 128), qh.reshape(blocks, 64), q_scales.view(np.uint8),
                           d.view(np.uint8).reshape(-1, 2)], axis=1)


QUANTIZERS = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}


def quantize(weight, kind: str):
    """A float tensor (numpy, last axis a multiple of 256) as the uint8 bytes of GGML type ``kind``,
    shaped as ``gguf.quants.quantize`` shapes its output."""
    import numpy as np

    rows = np.ascontiguousarray(weight, dtype=np.float32).reshape(-1, QK_K)
    data = QUANTIZERS[kind](rows)
    return data.reshape(*weight.shape[:-1], weight.shape[-1] // QK_K * data.shape[-1])
