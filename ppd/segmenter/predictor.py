"""The segmenter: a SAM2 model behind a numpy-in, numpy-out encode / predict interface.

A two-phase predictor in the style of sam2's ``SAM2ImagePredictor``: the expensive
:meth:`Segmenter.encode` runs the image encoder once per image (an LRU cache keyed by
image content makes repeated calls free), and the cheap :meth:`Segmenter.predict`
decodes B prompt sets in ONE mask-decoder call. Low-res logits are upsampled bilinearly
to the image size and thresholded at 0, as ``SAM2ImagePredictor`` does.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ppd.runtime import tune_cpu_allocator
from ppd.segmenter.attention import use_matmul_attention
from ppd.segmenter import cache
from ppd.segmenter.cache import EmbeddingFiles, embedding_cache_dir
from ppd.segmenter.decoding import decode, decode_bayesian, image_features, uncertainty_to_image
from ppd.segmenter.options import UNCERTAINTY_MODES, resolve_precision
from ppd.segmenter.transforms import image_key, image_to_float, preprocess
from ppd.segmenter.types import ImageEmbedding, Prediction


def prompt_array(value, name: str, dtype=None) -> np.ndarray:
    """``np.asarray(value, dtype)`` of a prompt argument, with a message that says what
    is wrong when ``value`` is ragged (prompt sets of different lengths) or not numeric."""
    try:
        arr = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError) as exc:
        text = str(exc)
        if "inhomogeneous" in text or "sequence" in text:
            raise ValueError(
                f"{name} is ragged (nested lists of different lengths, shape {_ragged_shape(value)}): every "
                "prompt set of a batch needs the same number of points; pad shorter sets with points "
                "of label -1 (ppd.prompts.stack_prompts does this)"
            ) from None
        raise ValueError(f"{name} must hold numbers: {text}") from None
    if arr.dtype == object:
        raise ValueError(
            f"{name} is ragged or holds non-numbers (shape {_ragged_shape(value)}): every prompt set "
            "of a batch needs the same number of points; pad shorter sets with points of label -1"
        )
    return arr


def _ragged_shape(value) -> str:
    """'(2, [3, 1], 2)'-style description of nested sequences (the lengths per level)."""
    levels: list[set[int]] = []
    nodes = [value]
    while nodes and all(isinstance(n, (list, tuple, np.ndarray)) for n in nodes) and len(levels) < 4:
        levels.append({len(n) for n in nodes})
        nodes = [c for n in nodes for c in n]
    return "(" + ", ".join(str(next(iter(s))) if len(s) == 1 else str(sorted(s)) for s in levels) + ")"


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
        self.cache_dir: Path | None = None if cache_dir is None else embedding_cache_dir(cache_dir)
        self._files: EmbeddingFiles | None = None
        if self.cache_dir is not None:
            self._files = EmbeddingFiles(self.cache_dir, self.model_fingerprint, self.device, self.image_size, self.embed_dim)

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
        emb = self._files.read(key) if self._files is not None else None
        if emb is None:
            img = image_to_float(image)
            x = preprocess(img, self.image_size, self.device)
            with torch.inference_mode(), self._autocast():
                embed, high = image_features(self.model, x)
            emb = ImageEmbedding(embed.float(), [h.float() for h in high], img.shape[:2], key)
            if self._files is not None:
                self._files.write(emb)
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
        return info if self._files is None else {**info, **self._files.counts}

    def model_fingerprint(self) -> str:
        """Content hash of everything an :class:`ImageEmbedding` depends on: the model's
        name, input size and weights (all of them, buffers included: the high-resolution
        features go through the mask decoder's projections), its precision and device
        type. Embeddings under ``cache_dir`` live in a folder of this name, so another
        checkpoint, precision or device never reads them. Hashing reads every weight once
        (about a second for the largest official model on a CPU), on first disk use."""
        return cache.model_fingerprint(self.model, self.name, self.image_size, self._precision, self.device.type)

    def _embedding_path(self, key: str) -> Path:
        """The file under ``cache_dir`` that holds the embedding of image ``key``."""
        return self._files.path(key)

    # -- prediction ---------------------------------------------------------------
    def _prompts_to_tensors(self, hw: np.ndarray, point_coords, point_labels, boxes, mask_input):
        """Validate prompts and scale them to model-input pixels. ``hw``: (1, 2) or (B, 2)."""
        H, W = hw[:, 0:1], hw[:, 1:2]  # (rows or 1, 1) for broadcasting over points
        n_rows = None
        coords_t = labels_t = boxes_t = mask_t = None
        if point_coords is not None or point_labels is not None:
            if point_coords is None or point_labels is None:
                raise ValueError("point_coords and point_labels must be given together")
            coords = prompt_array(point_coords, "point_coords", np.float64)
            labels = prompt_array(point_labels, "point_labels")
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
            b = prompt_array(boxes, "boxes", np.float64)
            if b.ndim == 1:
                b = b[None]
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"boxes must have shape (4,) or (B, 4) in XYXY; got {np.shape(boxes)}")
            if not np.isfinite(b).all():
                raise ValueError("boxes contain NaN or infinite values")
            reversed_ = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
            if reversed_.any():
                r = int(np.argmax(reversed_))
                raise ValueError(
                    f"box {tuple(b[r].tolist())} (row {r}) is reversed: boxes are XYXY with "
                    "x0 <= x1 and y0 <= y1"
                )
            outside = (b[:, 0::2] < 0).any(1) | (b[:, 0::2] > W).any(1) | (b[:, 1::2] < 0).any(1) | (b[:, 1::2] > H).any(1)
            if outside.any():
                r = int(np.argmax(outside))
                h, w = hw[min(r, len(hw) - 1)].astype(int)
                raise ValueError(
                    f"box {tuple(b[r].tolist())} (row {r}) reaches outside the image of width {w} and "
                    f"height {h}: box coordinates must lie within 0..{w} (x) and 0..{h} (y); clip it"
                )
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
        coords = prompt_array(point_coords, "point_coords")
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
        q = prompt_array(query_coords, "query_coords", np.float64)
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
        unc_img = None if unc is None else uncertainty_to_image(unc, sizes)
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
