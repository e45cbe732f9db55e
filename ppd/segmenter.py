"""SAM2 segmenter: exact, batched, cached.

A two-phase predictor in the style of sam2's ``SAM2ImagePredictor``: the expensive
:meth:`Segmenter.encode` runs the image encoder once per image (an LRU cache keyed by
image content makes repeated calls free), and the cheap :meth:`Segmenter.predict`
decodes B prompt sets in ONE mask-decoder call.

Preprocessing and post-processing are those of ``SAM2ImagePredictor`` (resize to the
model size, bilinear with antialias, ImageNet mean/std; low-res logits upsampled
bilinearly to the image size and thresholded at 0), written with plain torch ops so
that torchvision is never needed.

With the RUAC Bayesian decoder (``load_segmenter(decoder="ruac")``, see ``ppd.ruac``)
the masks come from its mean logits and predictions carry a pixel uncertainty map,
upsampled like the masks.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ppd.models import BUNDLED_NAME, build_sam2_model

if TYPE_CHECKING:
    from ppd.ruac.decoder import RuacDecoderOutput

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DECODERS = ("sam2", "ruac")
UNCERTAINTY_MODES = ("analytic", "mc")
PRECISIONS = ("fp32", "bf16")
#: Format number of the embedding files :class:`Segmenter` writes under ``cache_dir``.
EMBEDDING_FILE_FORMAT = 1


@dataclass
class ImageEmbedding:
    """Image features of one image, as ``SAM2ImagePredictor.set_image`` keeps them.

    Attributes:
        image_embed: (1, C, h, w) lowest-resolution features (with ``no_mem_embed``
            added), what the mask decoder attends to; h = w = image_size / 16.
        high_res_feats: the two higher-resolution feature maps, (1, C/8, 4h, 4w) and
            (1, C/4, 2h, 2w), already projected by the decoder's ``conv_s0/conv_s1``.
        orig_hw: (H, W) of the original image in pixels.
        key: content hash of the image; identifies the image in caches.
    """

    image_embed: torch.Tensor
    high_res_feats: list[torch.Tensor]
    orig_hw: tuple[int, int]
    key: str

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the embedding grid."""
        return tuple(self.image_embed.shape[-2:])  # type: ignore[return-value]


@dataclass
class Prediction:
    """Output of :meth:`Segmenter.predict` for B prompt sets.

    Attributes:
        masks: (B, H, W) bool masks at image size ((B, 3, H, W) with ``return_all``).
        scores: (B,) predicted IoU of each mask ((B, 3) with ``return_all``).
        logits: (B, h, w) low-resolution mask logits, clamped to [-32, 32] like
            ``SAM2ImagePredictor`` (h = w = image_size / 4); (B, 3, h, w) with ``return_all``.
        uncertainty: (B, H, W) float32 pixel-wise uncertainty in [0, 1] at image size
            ((B, 3, H, W) with ``return_all``), or None (RUAC decoder only).
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    uncertainty: np.ndarray | None = None


def image_to_float(image: np.ndarray) -> np.ndarray:
    """Convert a supported image array to (H, W, 3) float32 in [0, 1].

    Accepted inputs and their conversion:

    * (H, W, 3) uint8 RGB: divided by 255 (the reference format);
    * (H, W) or (H, W, 1) grey: repeated to three channels (any supported dtype);
    * (H, W, 4) RGBA: the alpha channel is dropped (not composited);
    * float16/32/64 in [0, 1]: used as is (values outside [0, 1] are an error);
    * uint16: divided by 65535.

    Raises:
        ValueError: for anything else (other dtypes, shapes, NaNs, empty images).
    """
    if not isinstance(image, np.ndarray):
        try:  # PIL images and array-likes
            image = np.asarray(image)
        except Exception as exc:  # pragma: no cover - defensive
            raise ValueError(f"image must be a numpy array, got {type(image).__name__}") from exc
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(
            "image must be HxWx3 (RGB), HxWx4 (RGBA), HxW or HxWx1 (grey); "
            f"got shape {image.shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    image = image[..., :3]
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if image.dtype in (np.float16, np.float32, np.float64):
        out = image.astype(np.float32)
        if not np.isfinite(out).all():
            raise ValueError("float image contains NaN or infinite values")
        if out.min() < 0.0 or out.max() > 1.0:
            raise ValueError(
                f"float images must be in [0, 1]; got range [{out.min():.3g}, {out.max():.3g}]"
            )
        return out
    raise ValueError(
        f"unsupported image dtype {image.dtype}; expected uint8, uint16 or float in [0, 1]"
    )


def image_key(image: np.ndarray) -> str:
    """Content hash of an image array (shape, dtype and bytes)."""
    arr = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=16)
    h.update(str((arr.shape, arr.dtype.str)).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def preprocess(image_float: np.ndarray, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) float in [0, 1] -> (1, 3, size, size) normalised model input.

    Same ops as ``SAM2Transforms``: torchvision's ``Resize((size, size))`` on a tensor is
    ``F.interpolate(bilinear, align_corners=False, antialias=True)``, then ``Normalize``.
    """
    x = torch.from_numpy(np.ascontiguousarray(image_float)).permute(2, 0, 1)[None].to(device)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def image_features(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the image encoder on a (N, 3, S, S) batch, as ``SAM2ImagePredictor.set_image``.

    Returns:
        ``(image_embed (N, C, h, w), [feat_s0 (N, C/8, 4h, 4w), feat_s1 (N, C/4, 2h, 2w)])``.
    """
    backbone_out = model.forward_image(x)
    _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    n = x.shape[0]
    feats = [
        f.permute(1, 2, 0).reshape(n, -1, *hw) for f, hw in zip(vision_feats, feat_sizes)
    ]
    return feats[-1], feats[:-1]


def encode_prompts(
    model: torch.nn.Module,
    coords: torch.Tensor | None,
    labels: torch.Tensor | None,
    boxes: torch.Tensor | None = None,
    mask_input: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM2's prompt encoder on points, boxes and mask inputs (see :func:`decode`).

    Returns:
        ``(sparse (B, N, C), dense (B, C, h, w))`` prompt embeddings.
    """
    points = (coords, labels) if coords is not None else None
    if boxes is not None:
        box_coords = boxes.reshape(-1, 2, 2)
        box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(
            boxes.shape[0], 1
        )
        if points is not None:
            points = (torch.cat([box_coords, points[0]], 1), torch.cat([box_labels, points[1]], 1))
        else:
            points = (box_coords, box_labels)
    return model.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)


def decode(
    model: torch.nn.Module,
    image_embed: torch.Tensor,
    high_res_feats: Sequence[torch.Tensor],
    coords: torch.Tensor | None,
    labels: torch.Tensor | None,
    boxes: torch.Tensor | None = None,
    mask_input: torch.Tensor | None = None,
    multimask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder, as ``SAM2ImagePredictor._predict``.

    Args:
        image_embed: (1, C, h, w) (one image shared by all rows) or (B, C, h, w).
        high_res_feats: matching high-resolution features.
        coords: (B, K, 2) point coordinates in model-input pixels (image_size scale).
        labels: (B, K) int labels, 1 fg, 0 bg, -1 padding.
        boxes: (B, 4) XYXY boxes in model-input pixels, or None.
        mask_input: (B, 1, 4h, 4w) low-res mask logits, or None.
        multimask: return the three multimask outputs instead of one mask.

    Returns:
        ``(low_res_logits (B, M, 4h, 4w), iou_pred (B, M))`` with M = 3 or 1.
    """
    sparse, dense = encode_prompts(model, coords, labels, boxes, mask_input)
    n_rows = sparse.shape[0]
    repeat = image_embed.shape[0] == 1 and n_rows > 1
    logits, iou, _, _ = model.sam_mask_decoder(
        image_embeddings=image_embed,
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=repeat,
        high_res_features=list(high_res_feats),
    )
    return logits, iou


def decode_bayesian(
    model: torch.nn.Module,
    head: torch.nn.Module,
    image_embed: torch.Tensor,
    high_res_feats: Sequence[torch.Tensor],
    coords: torch.Tensor | None,
    labels: torch.Tensor | None,
    boxes: torch.Tensor | None = None,
    mask_input: torch.Tensor | None = None,
    multimask: bool = False,
    mode: str = "analytic",
    mc_samples: int = 20,
    generator: torch.Generator | None = None,
) -> RuacDecoderOutput:
    """Prompt encoder + RUAC Bayesian decoder (``ppd.ruac.BayesianMaskDecoder``).

    Arguments as :func:`decode`, plus the head's ``mode``, ``mc_samples`` and ``generator``.

    Returns:
        ``ppd.ruac.RuacDecoderOutput`` (logits, iou_pred, uncertainty (B, M, 4h, 4w), ...).
    """
    sparse, dense = encode_prompts(model, coords, labels, boxes, mask_input)
    repeat = image_embed.shape[0] == 1 and sparse.shape[0] > 1
    return head(
        image_embeddings=image_embed,
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=repeat,
        high_res_features=list(high_res_feats),
        mode=mode,
        mc_samples=mc_samples,
        generator=generator,
        compute_kl=False,
    )


def _matmul_attention_class() -> type:
    """The subclass of SAM2's decoder ``Attention`` that :func:`use_matmul_attention` installs
    (built on first use: importing sam2 initialises Hydra, which stays behind the model
    factory)."""
    if "cls" in _MATMUL_ATTENTION:
        return _MATMUL_ATTENTION["cls"]
    from sam2.modeling.sam.transformer import Attention

    class MatmulAttention(Attention):
        """SAM2's mask-decoder attention with ``softmax(q k^T / sqrt(d)) v`` as two matmuls
        (same weights, same result up to float rounding)."""

        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            n_scores = q.shape[0] * self.num_heads * q.shape[1] * k.shape[1]
            if (self.training and self.dropout_p > 0) or n_scores > MATMUL_ATTENTION_MAX_SCORES:
                return super().forward(q, k, v)  # the fused kernel never holds all scores
            q = self._separate_heads(self.q_proj(q), self.num_heads)
            k = self._separate_heads(self.k_proj(k), self.num_heads)
            v = self._separate_heads(self.v_proj(v), self.num_heads)
            attn = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1)).softmax(dim=-1)
            return self.out_proj(self._recombine_heads(torch.matmul(attn, v)))

    _MATMUL_ATTENTION["cls"] = MatmulAttention
    return MatmulAttention


_MATMUL_ATTENTION: dict[str, type] = {}
#: Largest attention-score tensor (elements) :func:`use_matmul_attention` layers build;
#: larger calls (many prompt sets on 1024-px models) use the fused kernel.
MATMUL_ATTENTION_MAX_SCORES = 1 << 25


def use_matmul_attention(mask_decoder: torch.nn.Module, on: bool = True) -> int:
    """Make the attention layers of SAM2's mask decoder compute attention as two matmuls
    instead of ``F.scaled_dot_product_attention`` (``on=False``: back to SAM2's own);
    returns how many layers changed.

    Why: on CPU, PyTorch's fused attention kernel is slow for the decoder's shapes (8 heads
    of 4 to 8 channels over a few prompt tokens and the image tokens). Measured on the
    2-core CI-class CPU, bundled model, 2 threads (``python docs/scripts/s23_attention.py``,
    medians of 35 alternating rounds): a decoder call of 16 prompt sets on 16 images
    18.2 -> 16.2 ms, 16 calls of one set 47.7 -> 42.7 ms; masks identical, scores within
    1e-6; refine 2-4 ms faster with identical outputs. The official architectures keep
    SAM2's results within the parity tests' tolerances (tests/test_segmenter.py). Only
    plain ``Attention`` layers change (not subclasses such as the memory attention's
    ``RoPEAttention``); the class is swapped in place, so weights, state dict and module
    names stay those of SAM2. :class:`Segmenter` turns it on for CPU models and off on
    CUDA, where the fused kernel is the faster one.
    """
    from sam2.modeling.sam.transformer import Attention

    cls = _matmul_attention_class()
    old, new = (Attention, cls) if on else (cls, Attention)
    n = 0
    for module in mask_decoder.modules():
        if type(module) is old:
            module.__class__ = new
            n += 1
    return n


def _embedding_cache_dir(cache_dir: str | os.PathLike) -> Path:
    """``cache_dir`` as a folder that exists (created), or a ValueError saying why not."""
    path = Path(cache_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"embedding cache folder (cache_dir / --embedding-cache) {str(path)!r} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"embedding cache folder (cache_dir / --embedding-cache) {str(path)!r} cannot be created: {exc}") from exc
    return path


class Segmenter:
    """A SAM2 model behind a numpy-in, numpy-out two-phase interface.

    Build one with :func:`ppd.load_segmenter`.

    With a RUAC head (``ruac_head``, a ``ppd.ruac.BayesianMaskDecoder`` wrapping
    ``model.sam_mask_decoder``) masks come from the Bayesian decoder's mean logits and
    :attr:`Prediction.uncertainty` holds its pixel uncertainty; :attr:`uncertainty_mode`
    is then ``"analytic"`` or ``"mc"`` (``mc_samples`` draws from a generator seeded with
    :attr:`mc_seed` on every call, so predictions are reproducible), else None.

    Embeddings are kept in memory (LRU by image content, ``cache_size`` entries) and,
    with ``cache_dir``, on disk as well: one file per image
    (``cache_dir/<model fingerprint>/<image key>.pt``, see :meth:`model_fingerprint`),
    written atomically and read back by any later process with the same model,
    precision and device type, so an image is encoded once, not once per process. A
    file that cannot be used (truncated, from another version) is logged and replaced.
    A file holds the float32 features: 256 KB per image for the bundled model, about
    16 MB for the official 1024-px models. Nothing removes old files; delete the folder.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        name: str,
        device: torch.device | str | None = None,
        cache_size: int = 32,
        mask_threshold: float = 0.0,
        info: dict | None = None,
        ruac_head: torch.nn.Module | None = None,
        uncertainty: str = "analytic",
        mc_samples: int = 20,
        precision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self._precision = resolve_precision(precision, self.device, name)
        if self.device.type == "cpu":
            from ppd.runtime import tune_cpu_allocator

            tune_cpu_allocator()  # no page faults in large decoder batches, see ppd.runtime
        self.model = model.to(self.device).eval()
        use_matmul_attention(self.model.sam_mask_decoder, on=self.device.type == "cpu")
        if uncertainty not in UNCERTAINTY_MODES:
            raise ValueError(f"uncertainty must be one of {UNCERTAINTY_MODES}, got {uncertainty!r}")
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        self.ruac_head = None if ruac_head is None else ruac_head.to(self.device).eval()
        self.uncertainty_mode: str | None = uncertainty if ruac_head is not None else None
        self.mc_samples = mc_samples
        self.mc_seed = 0
        self.name = name
        self.info = info or {}
        self.mask_threshold = mask_threshold
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.cache_size = cache_size
        self._cache: OrderedDict[str, ImageEmbedding] = OrderedDict()
        self.cache_dir: Path | None = None if cache_dir is None else _embedding_cache_dir(cache_dir)
        self._disk_folder: Path | None = None  # cache_dir / model_fingerprint(), on first use
        self._disk = {"disk_hits": 0, "disk_writes": 0}

    # -- properties ---------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """Side of the square model input in pixels (256 for the bundled model)."""
        return int(self.model.image_size)

    @property
    def decoder(self) -> str:
        """``"ruac"`` with a Bayesian head, else ``"sam2"``."""
        return "sam2" if self.ruac_head is None else "ruac"

    @property
    def embed_dim(self) -> int:
        """Channels C of :attr:`ImageEmbedding.image_embed`."""
        return int(self.model.hidden_dim)

    @property
    def precision(self) -> str:
        """``"bf16"`` (autocast) or ``"fp32"``, see :func:`resolve_precision`; fixed at
        construction, since cached embeddings were computed with it."""
        return self._precision

    def _autocast(self):
        if self._precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # -- encoding -----------------------------------------------------------------
    def encode(self, image: np.ndarray) -> ImageEmbedding:
        """Encode one image (see :func:`image_to_float` for the accepted formats).

        Results are cached by image content (LRU, ``cache_size`` entries).
        """
        key = image_key(np.asarray(image))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        emb = self._read_embedding(key) if self.cache_dir is not None else None
        if emb is None:
            img = image_to_float(image)
            x = preprocess(img, self.image_size, self.device)
            with torch.inference_mode(), self._autocast():
                embed, high = image_features(self.model, x)
            emb = ImageEmbedding(embed.float(), [h.float() for h in high], img.shape[:2], key)
            if self.cache_dir is not None:
                self._write_embedding(emb)
        if self.cache_size > 0:
            self._cache[key] = emb
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return emb

    def clear_cache(self) -> None:
        """Empty the in-memory cache (files under ``cache_dir`` stay)."""
        self._cache.clear()

    @property
    def cache_info(self) -> dict[str, int]:
        """In-memory cache size and capacity; with ``cache_dir`` also how many embeddings
        were read from and written to disk by this segmenter."""
        info = {"size": len(self._cache), "max_size": self.cache_size}
        return info if self.cache_dir is None else {**info, **self._disk}

    def model_fingerprint(self) -> str:
        """Content hash of everything an :class:`ImageEmbedding` depends on: the model's
        name, input size and weights (all of them, buffers included: the high-resolution
        features go through the mask decoder's projections), its precision and device
        type. Embeddings under ``cache_dir`` live in a folder of this name, so another
        checkpoint, precision or device never reads them. Hashing reads every weight once
        (about a second for the largest official model on a CPU), on first disk use."""
        h = hashlib.blake2b(digest_size=10)
        h.update(f"{self.name}|{self.image_size}|{self._precision}|{self.device.type}".encode())
        for name, t in self.model.state_dict().items():
            h.update(f"|{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        safe = "".join(c if c.isalnum() or c in "._+-" else "_" for c in self.name)
        return f"{safe}-{self._precision}-{self.device.type}-{h.hexdigest()}"

    def _embedding_path(self, key: str) -> Path:
        if self._disk_folder is None:
            self._disk_folder = self.cache_dir / self.model_fingerprint()
        return self._disk_folder / f"{key}.pt"

    def _read_embedding(self, key: str) -> ImageEmbedding | None:
        """The embedding stored for image ``key``, or None (no file, or one that cannot be
        used: logged, then encoded again and overwritten)."""
        path = self._embedding_path(key)
        if not path.is_file():
            return None
        try:
            d = torch.load(path, map_location=self.device, weights_only=True)
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
        self._disk["disk_hits"] += 1
        return ImageEmbedding(embed, high, hw, key)

    def _write_embedding(self, emb: ImageEmbedding) -> None:
        """Store ``emb`` under ``cache_dir`` (atomically). A failed write is logged, not
        raised: the embedding is still returned, only not kept on disk."""
        from ppd import io

        path = self._embedding_path(emb.key)
        record = {"format": EMBEDDING_FILE_FORMAT, "key": emb.key, "orig_hw": list(emb.orig_hw),
                  "image_embed": emb.image_embed.cpu(), "high_res_feats": [h.cpu() for h in emb.high_res_feats]}
        try:
            io.save_torch(record, path)
        except OSError as exc:
            logger.warning("could not write the embedding cache file %s: %s", path, exc)
            return
        self._disk["disk_writes"] += 1

    # -- prediction ---------------------------------------------------------------
    def _prompts_to_tensors(self, hw: np.ndarray, point_coords, point_labels, boxes, mask_input):
        """Validate prompts and scale them to model-input pixels. ``hw``: (1, 2) or (B, 2)."""
        H, W = hw[:, 0:1], hw[:, 1:2]  # (rows or 1, 1) for broadcasting over points
        n_rows = None
        coords_t = labels_t = boxes_t = mask_t = None
        if point_coords is not None or point_labels is not None:
            if point_coords is None or point_labels is None:
                raise ValueError("point_coords and point_labels must be given together")
            coords = np.asarray(point_coords, dtype=np.float64)
            labels = np.asarray(point_labels)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None] if labels.ndim == 1 else labels
            if coords.ndim != 3 or coords.shape[-1] != 2:
                raise ValueError(
                    f"point_coords must have shape (K, 2) or (B, K, 2); got {np.shape(point_coords)}"
                )
            if labels.shape != coords.shape[:2]:
                raise ValueError(
                    f"point_labels must have shape {coords.shape[:2]} to match point_coords "
                    f"{coords.shape}; got {np.shape(point_labels)}"
                )
            if not np.issubdtype(labels.dtype, np.number) or not np.isin(labels, (-1, 0, 1)).all():
                raise ValueError("point_labels must be 1 (foreground), 0 (background) or -1 (padding)")
            real = labels >= 0
            if np.isnan(coords[real]).any() or np.isinf(coords[real]).any():
                raise ValueError("point_coords contain NaN or infinite values")
            outside = real & ((coords[..., 0] < 0) | (coords[..., 0] > W) | (coords[..., 1] < 0) | (coords[..., 1] > H))
            if outside.any():
                r, k = np.argwhere(outside)[0]
                h, w = hw[min(r, len(hw) - 1)].astype(int)
                raise ValueError(
                    f"point {tuple(coords[r, k].tolist())} (row {r}, index {k}) lies "
                    f"outside the image of width {w} and height {h}"
                )
            coords = np.where(real[..., None], coords, 0.0)
            n_rows = coords.shape[0]
            if len(hw) not in (1, n_rows):
                raise ValueError(f"got {n_rows} prompt sets for {len(hw)} images")
            scale = self.image_size / np.stack([W, H], -1)  # (rows or 1, 1, 2)
            coords_t = torch.as_tensor(coords * scale, dtype=torch.float, device=self.device)
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=self.device)
        if boxes is not None:
            b = np.asarray(boxes, dtype=np.float64)
            if b.ndim == 1:
                b = b[None]
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"boxes must have shape (4,) or (B, 4) in XYXY; got {np.shape(boxes)}")
            if not np.isfinite(b).all():
                raise ValueError("boxes contain NaN or infinite values")
            if n_rows is not None and b.shape[0] != n_rows:
                raise ValueError(f"got {b.shape[0]} boxes for {n_rows} prompt sets")
            n_rows = b.shape[0]
            scale = self.image_size / np.concatenate([W, H, W, H], -1)
            boxes_t = torch.as_tensor(b * scale, dtype=torch.float, device=self.device)
        if n_rows is None:
            raise ValueError("predict needs point prompts or boxes")
        if boxes_t is None and bool((labels_t < 0).all(dim=1).any()):
            row = int((labels_t < 0).all(dim=1).nonzero()[0, 0])
            raise ValueError(f"prompt set {row} has only padding points (label -1) and no box")
        if mask_input is not None:
            m = torch.as_tensor(np.asarray(mask_input), dtype=torch.float, device=self.device)
            side = self.image_size // 4
            if m.ndim == 2:
                m = m[None]
            if m.ndim == 3:
                m = m[:, None]
            if m.shape[1:] != (1, side, side) or m.shape[0] not in (1, n_rows):
                raise ValueError(
                    f"mask_input must be low-res logits of shape ({side}, {side}) or "
                    f"(B, {side}, {side}); got {tuple(np.shape(mask_input))}"
                )
            mask_t = m.expand(n_rows, -1, -1, -1)
        return coords_t, labels_t, boxes_t, mask_t

    def predict(
        self,
        emb_or_image: ImageEmbedding | np.ndarray,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = False,
        return_all: bool = False,
    ) -> Prediction:
        """Decode B prompt sets on one image in one decoder call.

        Args:
            emb_or_image: an :class:`ImageEmbedding` or an image (encoded, cached).
            point_coords: (B, K, 2) or (K, 2) points (x, y) in image pixels.
            point_labels: (B, K) or (K,): 1 foreground, 0 background, -1 padding.
            boxes: (B, 4) or (4,) XYXY boxes in image pixels, or None.
            mask_input: low-res logits (h, w) / (B, h, w) from a previous prediction.
            multimask: decode three masks per row and keep the one with the highest
                predicted IoU (better for a single ambiguous click).
            return_all: with ``multimask``, return all three masks per row.

        Returns:
            :class:`Prediction` with B rows (B = 1 for unbatched input).
        """
        emb = emb_or_image if isinstance(emb_or_image, ImageEmbedding) else self.encode(emb_or_image)
        hw = np.asarray([emb.orig_hw], dtype=np.float64)
        prompts = self._prompts_to_tensors(hw, point_coords, point_labels, boxes, mask_input)
        return self._decode_rows(emb.image_embed, emb.high_res_feats, [emb.orig_hw], prompts, multimask, return_all)

    def predict_batch(
        self,
        embeddings: Sequence[ImageEmbedding],
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        multimask: bool = False,
        return_all: bool = False,
        mask_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> Prediction:
        """Decode one prompt set per embedding, rows on different images, in ONE decoder call.

        Args:
            embeddings: B image embeddings (row b is decoded on ``embeddings[b]``).
            point_coords: (B, K, 2) points (x, y) in pixels of each row's image.
            point_labels: (B, K): 1 foreground, 0 background, -1 padding.
            multimask: keep the best of three masks per row (highest predicted IoU).
            return_all: with ``multimask``, return all three masks per row.
            mask_sizes: B (H, W) sizes to upsample the masks (and uncertainty maps) to
                instead of the images' sizes, e.g. smaller ones for per-patch statistics
                of a large image (the low-res logits are the same; each mask pixel is the
                logits' bilinear value at its centre). None: the images' sizes.

        Returns:
            :class:`Prediction`; ``masks`` is (B, H, W) ((B, 3, H, W) with ``return_all``)
            when all rows share one size, else an object array of B (H_b, W_b) (or
            (3, H_b, W_b)) masks.
        """
        _, prompts, embed, high = self._batch_rows("predict_batch", embeddings, point_coords, point_labels)
        sizes = [tuple(e.orig_hw) for e in embeddings]
        if mask_sizes is not None:
            sizes = [(int(h), int(w)) for h, w in mask_sizes]
            if len(sizes) != len(embeddings) or min(min(s) for s in sizes) < 1:
                raise ValueError(f"mask_sizes must be {len(embeddings)} (H, W) pairs >= 1, got {mask_sizes!r}")
        return self._decode_rows(embed, high, sizes, prompts, multimask, return_all)

    def _batch_rows(self, caller: str, embeddings: Sequence[ImageEmbedding], point_coords: np.ndarray,
                    point_labels: np.ndarray) -> tuple[np.ndarray, tuple, torch.Tensor, list[torch.Tensor]]:
        """Checked inputs of a call with one prompt set per embedding: the images' (H, W)
        (B, 2), the prompt tensors, and the embeddings' features stacked row by row."""
        if len(embeddings) == 0:
            raise ValueError(f"{caller} needs at least one embedding")
        hw = np.asarray([e.orig_hw for e in embeddings], dtype=np.float64)
        coords = np.asarray(point_coords)
        if coords.ndim != 3 or coords.shape[0] != len(embeddings):
            raise ValueError(
                f"point_coords must have shape (B, K, 2) with B = {len(embeddings)} embeddings; got {coords.shape}"
            )
        prompts = self._prompts_to_tensors(hw, coords, point_labels, None, None)
        embed = torch.cat([e.image_embed for e in embeddings])
        high = [torch.cat([e.high_res_feats[i] for e in embeddings]) for i in range(len(embeddings[0].high_res_feats))]
        return hw, prompts, embed, high

    def predict_at(
        self,
        embeddings: Sequence[ImageEmbedding],
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        query_coords: np.ndarray,
        multimask: bool = False,
        return_all: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_batch`, but instead of whole masks, whether each row's mask
        covers each of its query pixels: what ``masks[b, y, x]`` would be, read off the
        low-res logits (their bilinear value at the pixel's centre, as the upsampling
        computes it) without building the image-size mask.

        Why: checking clicks against a mask (``ppd.agents.baselines.mask_agreement``)
        needs a few pixels, and on a large photo an image-size mask per prompt set costs
        far more than the decoder (about 0.3 s of a 0.5 s refinement at 3072 x 3072).
        The values equal the masks' up to float rounding (a logit within about 1e-6 of
        the threshold may come out on the other side).

        Args:
            embeddings, point_coords, point_labels, multimask, return_all: as
                :meth:`predict_batch`.
            query_coords: (B, Q, 2) pixels (x, y) per row, rounded and clipped to the
                row's image.

        Returns:
            ``(inside, scores)``: (B, Q) bool and (B,) ((B, 3, Q) and (B, 3) with
            ``return_all``).
        """
        hw, prompts, embed, high = self._batch_rows("predict_at", embeddings, point_coords, point_labels)
        q = np.asarray(query_coords, np.float64)
        if q.ndim != 3 or q.shape[0] != len(embeddings) or q.shape[2] != 2:
            raise ValueError(f"query_coords must have shape (B, Q, 2) with B = {len(embeddings)}; got {q.shape}")
        low, iou, _ = self._decode_low(embed, high, prompts, multimask, return_all)
        size = hw[:, None, ::-1]  # (B, 1, 2) as (W, H)
        pix = np.clip(np.round(q), 0, size - 1)
        grid = torch.as_tensor((pix + 0.5) / size * 2.0 - 1.0, dtype=torch.float32, device=low.device)[:, None]
        vals = F.grid_sample(low, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0]
        inside, scores = (vals > self.mask_threshold).cpu().numpy(), iou.cpu().numpy()
        return (inside, scores) if return_all else (inside[:, 0], scores[:, 0])

    def _decode_low(self, embed, high, prompts, multimask, return_all) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Low-res logits (B, M, h, w) (not clamped), predicted IoU (B, M) and low-res
        uncertainty (or None) of the rows; M = 1 unless ``multimask`` and ``return_all``."""
        coords, labels, boxes_t, mask_t = prompts
        unc = None
        with torch.inference_mode(), self._autocast():
            if self.ruac_head is None:
                low, iou = decode(self.model, embed, high, coords, labels, boxes_t, mask_t, multimask)
            else:
                gen = None
                if self.uncertainty_mode == "mc":
                    gen = torch.Generator(device=self.device).manual_seed(self.mc_seed)
                out = decode_bayesian(
                    self.model, self.ruac_head, embed, high, coords, labels, boxes_t, mask_t,
                    multimask, self.uncertainty_mode, self.mc_samples, gen,
                )
                low, iou, unc = out.logits, out.iou_pred, out.uncertainty.float()
        low, iou = low.float(), iou.float()
        if multimask and not return_all:
            best = iou.argmax(dim=1)
            rows = torch.arange(low.shape[0], device=low.device)
            low, iou = low[rows, best][:, None], iou[rows, best][:, None]
            if unc is not None:
                unc = unc[rows, best][:, None]
        return low, iou, unc

    def _decode_rows(self, embed, high, sizes, prompts, multimask, return_all) -> Prediction:
        low, iou, unc = self._decode_low(embed, high, prompts, multimask, return_all)
        if len(set(sizes)) == 1:
            masks = (F.interpolate(low, sizes[0], mode="bilinear", align_corners=False) > self.mask_threshold).cpu().numpy()
        else:  # rows on images of different sizes: upsample each to its own size
            masks = np.empty(len(sizes), dtype=object)
            for i, size in enumerate(sizes):
                masks[i] = (F.interpolate(low[i : i + 1], size, mode="bilinear", align_corners=False) > self.mask_threshold)[0].cpu().numpy()
        unc_img = None if unc is None else _uncertainty_to_image(unc, sizes)
        low = torch.clamp(low, -32.0, 32.0)
        if not return_all:
            if masks.dtype == object:
                for i in range(len(masks)):
                    masks[i] = masks[i][0]
                    if unc_img is not None:
                        unc_img[i] = unc_img[i][0]
            else:
                masks = masks[:, 0]
                if unc_img is not None:
                    unc_img = unc_img[:, 0]
            low, iou = low[:, 0], iou[:, 0]
        return Prediction(masks, iou.cpu().numpy(), low.cpu().numpy(), unc_img)


def _uncertainty_to_image(unc: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """(B, M, h, w) low-res uncertainty -> float32 in [0, 1] at image size, bilinear as the
    masks: (B, M, H, W), or an object array of (M, H_b, W_b) when sizes differ."""
    if len(set(sizes)) == 1:
        up = F.interpolate(unc, sizes[0], mode="bilinear", align_corners=False)
        return up.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
    out = np.empty(len(sizes), dtype=object)
    for i, size in enumerate(sizes):
        up = F.interpolate(unc[i : i + 1], size, mode="bilinear", align_corners=False)[0]
        out[i] = up.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
    return out


def resolve_precision(precision: str | None, device: torch.device | str, name: str | None = None) -> str:
    """The segmenter's precision on ``device`` for the model ``name``.

    None gives ``"bf16"`` autocast on CUDA for official SAM2 models (SAM2's own predictor
    runs them so) and ``"fp32"`` otherwise: on CPU, and for the bundled model, which was
    trained and benchmarked in fp32. Measured on an H100 (session 15, README "On a GPU"):
    with the bundled model bf16 is slower (refine 109 vs 80 ms: autocast casts weights at
    every one of several hundred small layers) and changes 5 of 20 refinements, while fp32
    reproduces CPU results.

    Raises:
        ValueError: an unknown precision, or ``"bf16"`` on a non-CUDA device (CPU bf16
            autocast is slower than fp32 on most CPUs and was never measured here).
    """
    device = torch.device(device)
    if precision is None:
        return "bf16" if device.type == "cuda" and name != BUNDLED_NAME else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or None, got {precision!r}")
    if precision == "bf16" and device.type != "cuda":
        raise ValueError(f'precision="bf16" needs a CUDA device, got device {str(device)!r}; use "fp32"')
    return precision


def load_segmenter(
    name: str = BUNDLED_NAME,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    cache_size: int = 32,
    decoder: str = "sam2",
    ruac_checkpoint: str | os.PathLike | None = None,
    uncertainty: str = "analytic",
    mc_samples: int = 20,
    precision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Segmenter:
    """Load a SAM2 segmenter, optionally with the RUAC Bayesian decoder.

    Args:
        name: ``"sam2-tiny-synthetic"`` (bundled, CPU-friendly, 256 px) or an official
            config name: ``sam2.1_hiera_t/s/b+/l``, ``sam2_hiera_t/s/b+/l``.
        checkpoint: local checkpoint file in the official format ``{"model": state_dict}``.
            Required for official names; defaults to the shipped file for the bundled one.
        device: ``"cuda"``, ``"cpu"``...; default CUDA when available, else CPU.
        precision: ``"bf16"`` or ``"fp32"``; default ``"bf16"`` autocast on CUDA for official
            models (as SAM2's predictor), ``"fp32"`` on CPU and for the bundled model (see
            :func:`resolve_precision`). ``"fp32"`` on CUDA reproduces CPU results (masks,
            rewards, refinements; tests/test_cuda.py); bf16 moves boundary pixels and, with
            the small bundled model, sometimes a whole region.
        cache_size: number of image embeddings kept (LRU by image content); 0 disables.
        decoder: ``"sam2"`` (SAM2's own mask decoder) or ``"ruac"`` (the Bayesian decoder
            of ``ppd.ruac``: masks from its mean logits plus ``Prediction.uncertainty``).
        ruac_checkpoint: with ``decoder="ruac"``, a run directory of ``ppd train-ruac``
            (holding ``ruac_head.pt``) or the head file itself. The head must have been
            trained on this model's mask decoder.
        uncertainty: ``"analytic"`` (closed form, one pass) or ``"mc"`` (sampled).
        mc_samples: samples per prediction in ``"mc"`` mode.
        cache_dir: a folder to keep image embeddings in across processes (created if
            missing; see :class:`Segmenter`); None: in memory only.

    Raises:
        ValueError: unknown name (the message lists the known ones), a checkpoint that
            does not fit the config (missing / unexpected keys named), an unknown decoder
            or uncertainty mode, ``decoder="ruac"`` without ``ruac_checkpoint``, a head
            that does not fit the model, an unknown precision or bf16 off CUDA, a
            ``cache_dir`` that is a file or cannot be created.
        FileNotFoundError: missing checkpoint file (the message says where the official
            checkpoints are published) or missing RUAC head.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if uncertainty not in UNCERTAINTY_MODES:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTY_MODES}, got {uncertainty!r}")
    resolve_precision(precision, device or ("cuda" if torch.cuda.is_available() else "cpu"), name)  # fail before loading
    head_path = None
    if decoder == "ruac":
        if ruac_checkpoint is None:
            raise ValueError(
                'decoder="ruac" needs ruac_checkpoint: a run directory containing ruac_head.pt '
                "or the file. Train a head on this model with `ppd train-ruac --out DIR` "
                "(see `ppd train-ruac --help`)."
            )
        from ppd.ruac.decoder import resolve_head_path

        head_path = resolve_head_path(ruac_checkpoint)
    elif ruac_checkpoint is not None:
        raise ValueError('ruac_checkpoint was given but decoder="sam2"; pass decoder="ruac" to use it')
    model, info = build_sam2_model(name, checkpoint)
    head = None
    if head_path is not None:
        from ppd.ruac.decoder import load_head

        head = load_head(head_path, model.sam_mask_decoder)
        info = {**info, "ruac_checkpoint": str(head_path), "ruac_meta": head.meta}
    return Segmenter(
        model, name, device=device, cache_size=cache_size, info=info,
        ruac_head=head, uncertainty=uncertainty, mc_samples=mc_samples, precision=precision,
        cache_dir=cache_dir,
    )
