"""Turning rows into things to compare, for the data diet and lint: the
row's text (``row_text``), MinHash sketches for near duplicates
(``near_duplicate_groups``), sentence embeddings (``SentenceEncoder``) and
clusters of them (``kmeans``).

``SentenceEncoder`` loads a sentence-transformers style encoder (the
bundled all-MiniLM-L6-v2, see ``models.prepare_bundled_encoder``) with plain
transformers: mean pooling over the real tokens, then L2 normalisation, as
the model was trained. Unit vectors make a dot product the cosine
similarity and make Euclidean k-means cluster by angle.

``row_text`` is pure Python; numpy, torch and transformers load only when
used (the web process imports this module).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

from tuning.data.versioning import normalise_text
from tuning.errors import ConfigError, DatasetError, ModelError

__all__ = ["SentenceEncoder", "row_text", "kmeans", "near_duplicate_groups", "lsh_parameters"]

# Keys that identify a row rather than say anything in it.
ID_KEYS = frozenset({"id", "_id", "uuid", "idx", "index"})


def _texts(value) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    if isinstance(value, dict):
        # A chat turn: its words, not its role ({"role", "content"} or ShareGPT's {"from", "value"}).
        for key in ("content", "value"):
            if key in value:
                return _texts(value[key])
        return [text for key, item in value.items() if key.lower() not in ID_KEYS for text in _texts(item)]
    return []  # numbers, booleans, null: a weight or a score, not text


def row_text(row: dict) -> str:
    """The text of a row of any schema, one part per line, in the row's
    key order: instruction/input/output, prompt/completion, text(+label),
    prompt/chosen/rejected, messages or conversations (contents only)."""
    if not isinstance(row, dict):
        raise DatasetError(f"each row must be a JSON object, not {type(row).__name__}")
    return "\n".join(text for key, value in row.items() if key.lower() not in ID_KEYS for text in _texts(value))


# ---------------------------------------------------------------- MinHash + LSH (Broder 1997)

NUM_PERM = 128  # hash functions per signature: Jaccard estimates within ±0.044 (one sd, sqrt(J(1-J)/128))
SHINGLE_WORDS = 3  # word 3-grams: instruction rows are short, longer shingles leave too few per row


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def _shingle_hashes(text: str, size: int, cache: dict[str, int], mix):
    """64-bit hashes of the text's word ``size``-grams (the whole text when it is shorter): each word is
    hashed once (``cache``), a shingle is sum(word hash x ``mix``[position]) mod 2^64, so word order counts."""
    import numpy as np

    words = re.findall(r"\w+", normalise_text(text))
    if not words:
        return None
    for word in set(words).difference(cache):
        cache[word] = _word_hash(word)
    hashes = np.array([cache[w] for w in words], dtype=np.uint64)
    if len(words) <= size:
        return (hashes * mix[:len(words)]).sum(keepdims=True)
    count = len(words) - size + 1
    return sum(hashes[k:k + count] * mix[k] for k in range(size))  # repeats are harmless: MinHash takes the min


def lsh_parameters(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) for LSH: the most rows per band (fewest chance pairs) that still make a pair
    at ``threshold`` Jaccard a candidate with probability >= 0.99. Candidates are then checked against
    the threshold on the full signature, so chance pairs cost time, not accuracy."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= 0.99:
            return bands, rows
    return num_perm, 1


def near_duplicate_groups(texts: list[str], *, threshold: float = 0.8, num_perm: int = NUM_PERM,
                          shingle: int = SHINGLE_WORDS,
                          progress: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Groups (indices into ``texts``, ascending, two or more each) whose estimated Jaccard similarity of
    word shingles is at least ``threshold``. Groups are connected components, so A~B and B~C group
    A, B and C. Texts without words never match. Deterministic: the hash functions have a fixed seed."""
    import numpy as np

    if not 0 < threshold <= 1:
        raise ConfigError({"threshold": f"must be above 0 and at most 1 (got {threshold})"})
    rng = np.random.default_rng(1997)
    # Multiply-shift hashing of 64-bit shingle hashes: odd multiplier, keep the top 32 bits.
    a = rng.integers(1, 2 ** 64, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2 ** 64, size=num_perm, dtype=np.uint64)
    mix = rng.integers(1, 2 ** 64, size=shingle, dtype=np.uint64) | np.uint64(1)
    signatures = np.full((len(texts), num_perm), np.iinfo(np.uint32).max, dtype=np.uint64)
    has_words = np.zeros(len(texts), dtype=bool)
    cache: dict[str, int] = {}
    for index, text in enumerate(texts):
        x = _shingle_hashes(text, shingle, cache, mix)
        if x is not None:
            signatures[index] = ((a[:, None] * x[None, :] + b[:, None]) >> np.uint64(32)).min(axis=1)
            has_words[index] = True
        if progress is not None and (index + 1) % 500 == 0:
            progress(index + 1, len(texts))
    bands, rows = lsh_parameters(threshold, num_perm)
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    candidates = np.flatnonzero(has_words)
    checked: set[tuple[int, int]] = set()
    for band in range(bands):
        # Rows whose band slices are equal share a bucket: group them by sorting the slices as raw bytes.
        keys = np.ascontiguousarray(signatures[candidates, band * rows:(band + 1) * rows]).view(f"V{8 * rows}")
        _, bucket, sizes = np.unique(keys.ravel(), return_inverse=True, return_counts=True)
        order = np.argsort(bucket, kind="stable")
        ends = np.cumsum(sizes)
        for end, size in zip(ends[sizes > 1], sizes[sizes > 1]):
            members = candidates[order[end - size:end]].tolist()
            # All pairs in small buckets; a huge bucket (many copies of one text) is checked against its
            # first member only, which already joins the copies into one group.
            pairs = ((i, j) for n, i in enumerate(members) for j in members[n + 1:]) if size <= 64 \
                else ((members[0], j) for j in members[1:])
            for i, j in pairs:
                if (i, j) in checked or find(i) == find(j):
                    continue
                checked.add((i, j))
                if np.mean(signatures[i] == signatures[j]) >= threshold:
                    parent[max(find(i), find(j))] = min(find(i), find(j))
    if progress is not None:
        progress(len(texts), len(texts))
    groups: dict[int, list[int]] = {}
    for index in range(len(texts)):
        groups.setdefault(find(index), []).append(index)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


class SentenceEncoder:
    """``encode(texts)`` → (len(texts), dim) float32 unit vectors."""

    def __init__(self, path: str | Path, *, max_length: int = 256, device: str = "cpu"):
        from tuning.models import MODEL_CODE_LOCK

        path = Path(path)
        if not (path / "config.json").exists():
            raise ModelError(f"no sentence encoder at {path} (config.json missing); prepare the bundled one with "
                             f"tuning.models.prepare_bundled_encoder or point to an encoder directory")
        # First imports of transformers' lazy modules race across threads (see MODEL_CODE_LOCK).
        with MODEL_CODE_LOCK:
            import torch
            from transformers import AutoModel, AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(path)
                self.model = AutoModel.from_pretrained(path, use_safetensors=True, dtype=torch.float32)
            except (OSError, ValueError) as exc:
                raise ModelError(f"cannot load the sentence encoder at {path} (safetensors weights are "
                                 f"required): {exc}") from None
        self.model.to(device).eval()
        self.device = device
        # 256 word pieces: what all-MiniLM-L6-v2 was trained with; longer input only dilutes the mean.
        self.max_length = min(max_length, getattr(self.tokenizer, "model_max_length", max_length) or max_length)

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = 32,
               progress: Callable[[int, int], None] | None = None):
        import numpy as np
        import torch

        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        texts = [text if isinstance(text, str) else str(text) for text in texts]
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        # Similar lengths batch together so little of each batch is padding; results go back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in chunk], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state  # (batch, tokens, dim)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[chunk] = pooled.cpu().numpy()
            if progress is not None:
                progress(min(start + batch_size, len(texts)), len(texts))
        return out

    def __call__(self, texts: list[str]):
        """The encoder as the ``embed_fn`` that ``diet.diverse_subsample`` takes."""
        return self.encode(texts)


def kmeans(points, k: int, *, seed: int, iterations: int = 50):
    """(labels, centres) by Lloyd's algorithm from a k-means++ start (Arthur & Vassilvitskii 2007) drawn
    with ``seed``. An emptied cluster is re-seeded at the point farthest from its centre."""
    import numpy as np

    x = np.asarray(points, dtype=np.float64)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    nearest = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = nearest.sum()
        pick = rng.choice(len(x), p=nearest / total) if total > 0 else rng.integers(len(x))
        centres.append(x[pick])
        nearest = np.minimum(nearest, ((x - x[pick]) ** 2).sum(axis=1))
    centres = np.stack(centres)
    for _ in range(iterations):
        labels, distances = _assign(x, centres)
        moved = centres.copy()
        for c in range(k):
            members = labels == c
            moved[c] = x[members].mean(axis=0) if members.any() else x[distances.argmax()]
        if np.allclose(moved, centres):
            break
        centres = moved
    return _assign(x, centres)[0], centres


def _assign(x, centres):
    """Nearest centre and squared distance for every point, in chunks so memory stays ~N x 8 KiB."""
    import numpy as np

    labels = np.empty(len(x), dtype=np.int64)
    distances = np.empty(len(x))
    squared = (centres ** 2).sum(axis=1)
    for start in range(0, len(x), 1024):
        part = x[start:start + 1024]
        d = (part ** 2).sum(axis=1)[:, None] - 2 * part @ centres.T + squared[None, :]
        labels[start:start + 1024] = d.argmin(axis=1)
        distances[start:start + 1024] = d.min(axis=1)
    return labels, distances
