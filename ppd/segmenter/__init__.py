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

Modules:

* :mod:`~ppd.segmenter.types`: :class:`ImageEmbedding` and :class:`Prediction`;
* :mod:`~ppd.segmenter.transforms`: image arrays to model input (:func:`image_to_float`,
  :func:`image_key`, :func:`preprocess`);
* :mod:`~ppd.segmenter.decoding`: image encoder and prompt / mask decoding on tensors
  (:func:`image_features`, :func:`encode_prompts`, :func:`decode`, :func:`decode_bayesian`);
* :mod:`~ppd.segmenter.attention`: the CPU decoder attention (:func:`use_matmul_attention`);
* :mod:`~ppd.segmenter.cache`: the on-disk embedding cache;
* :mod:`~ppd.segmenter.options`: decoders, uncertainty modes, precisions
  (:func:`resolve_precision`);
* :mod:`~ppd.segmenter.predictor`: :class:`Segmenter`;
* :mod:`~ppd.segmenter.builder`: :func:`load_segmenter`.

Module-level settings are read where they are used: patch
``ppd.segmenter.attention.MATMUL_ATTENTION_MAX_SCORES`` and
``ppd.segmenter.predictor.image_features`` (what :meth:`Segmenter.encode` calls), not the
names re-exported here.
"""

from ppd.models import BUNDLED_NAME, build_sam2_model  # re-exported
from ppd.segmenter.attention import MATMUL_ATTENTION_MAX_SCORES, use_matmul_attention
from ppd.segmenter.cache import EMBEDDING_FILE_FORMAT
from ppd.segmenter.decoding import decode, decode_bayesian, encode_prompts, image_features
from ppd.segmenter.options import DECODERS, PRECISIONS, UNCERTAINTY_MODES, resolve_precision
from ppd.segmenter.predictor import Segmenter
from ppd.segmenter.transforms import IMAGENET_MEAN, IMAGENET_STD, image_key, image_to_float, preprocess
from ppd.segmenter.types import ImageEmbedding, Prediction

# Last: the builder imports ppd.ruac, whose modules may import the names above.
from ppd.segmenter.builder import load_segmenter

__all__ = [
    "BUNDLED_NAME", "DECODERS", "EMBEDDING_FILE_FORMAT", "IMAGENET_MEAN", "IMAGENET_STD",
    "MATMUL_ATTENTION_MAX_SCORES", "PRECISIONS", "UNCERTAINTY_MODES", "ImageEmbedding",
    "Prediction", "Segmenter", "build_sam2_model", "decode", "decode_bayesian",
    "encode_prompts", "image_features", "image_key", "image_to_float", "load_segmenter",
    "preprocess", "resolve_precision", "use_matmul_attention",
]
