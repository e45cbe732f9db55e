"""On-disk embedding cache: image features kept in files, per model, across processes."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import torch

from ppd import io
from ppd.segmenter.types import ImageEmbedding
from ppd.torch_files import load_torch

logger = logging.getLogger(__name__)

#: Format number of the embedding files :class:`Segmenter` writes under ``cache_dir``.
EMBEDDING_FILE_FORMAT = 1


def embedding_cache_dir(cache_dir: str | os.PathLike) -> Path:
    """``cache_dir`` as a folder that exists (created), or a ValueError saying why not."""
    path = Path(cache_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"embedding cache folder (cache_dir / --embedding-cache) {str(path)!r} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"embedding cache folder (cache_dir / --embedding-cache) {str(path)!r} cannot be created: {exc}") from exc
    return path


def model_fingerprint(model: torch.nn.Module, name: str, image_size: int, precision: str, device_type: str) -> str:
    """Folder name of a model's embedding files: the model's name, precision and device
    type, and a hash of these, its input size and all its weights (buffers included)."""
    h = hashlib.blake2b(digest_size=10)
    h.update(f"{name}|{image_size}|{precision}|{device_type}".encode())
    for key, t in model.state_dict().items():
        h.update(f"|{key}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    safe = "".join(c if c.isalnum() or c in "._+-" else "_" for c in name)
    return f"{safe}-{precision}-{device_type}-{h.hexdigest()}"


class EmbeddingFiles:
    """The embedding files of one model: ``root/<model fingerprint>/<image key>.pt``.

    Each file holds one image's float32 features, written atomically; :meth:`read` checks
    them against the model's shapes. ``counts`` holds how many embeddings were read
    (``disk_hits``) and written (``disk_writes``).

    Args:
        root: the cache folder (``cache_dir``), which exists.
        fingerprint: returns the model's folder name (see :func:`model_fingerprint`);
            called once, on first use, since it reads every weight.
        device: where read embeddings are loaded.
        image_size: the model's input size; embeddings are (1, embed_dim, size/16, size/16).
        embed_dim: channels of the lowest-resolution features.
    """

    def __init__(self, root: Path, fingerprint: Callable[[], str], device: torch.device, image_size: int,
                 embed_dim: int) -> None:
        self.root = root
        self._fingerprint = fingerprint
        self._folder: Path | None = None  # root / fingerprint(), on first use
        self.device = device
        self.image_size = image_size
        self.embed_dim = embed_dim
        self.counts = {"disk_hits": 0, "disk_writes": 0}

    def path(self, key: str) -> Path:
        """The file of the image with content key ``key``."""
        if self._folder is None:
            self._folder = self.root / self._fingerprint()
        return self._folder / f"{key}.pt"

    def read(self, key: str) -> ImageEmbedding | None:
        """The embedding stored for image ``key``, or None (no file, or one that cannot be
        used: logged, then encoded again and overwritten)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            d = load_torch(path, "cached embedding", self.device)
            embed, high, hw = d["image_embed"], list(d["high_res_feats"]), tuple(int(v) for v in d["orig_hw"])
            side = self.image_size // 16
            shapes = [(1, self.embed_dim, side, side)] + [tuple(t.shape) for t in high]
            if d["format"] != EMBEDDING_FILE_FORMAT or d["key"] != key or tuple(embed.shape) != shapes[0] or len(high) != 2 \
                    or any(t.shape[0] != 1 or t.dtype != torch.float32 for t in high) or embed.dtype != torch.float32 \
                    or len(hw) != 2 or min(hw) < 1:
                raise ValueError(f"unexpected contents (format {d.get('format')!r}, shapes {shapes})")
        except Exception as exc:  # a truncated, foreign or outdated file: encode again
            first_line = (str(exc).strip().splitlines() or [""])[0]
            logger.warning("ignoring cached embedding %s (%s: %s); encoding the image again", path, type(exc).__name__, first_line)
            return None
        self.counts["disk_hits"] += 1
        return ImageEmbedding(embed, high, hw, key)

    def write(self, emb: ImageEmbedding) -> None:
        """Store ``emb`` in its file (atomically). A failed write is logged, not
        raised: the embedding is still returned, only not kept on disk."""
        path = self.path(emb.key)
        record = {"format": EMBEDDING_FILE_FORMAT, "key": emb.key, "orig_hw": list(emb.orig_hw),
                  "image_embed": emb.image_embed.cpu(), "high_res_feats": [h.cpu() for h in emb.high_res_feats]}
        try:
            io.save_torch(record, path)
        except OSError as exc:
            logger.warning("could not write the embedding cache file %s: %s", path, exc)
            return
        self.counts["disk_writes"] += 1
