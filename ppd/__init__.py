"""ppd: point prompts for SAM2, made better by reinforcement learning.

Public API (see DESIGN.md)::

    import ppd
    seg = ppd.load_segmenter()          # bundled sam2-tiny-synthetic, CPU friendly
    emb = seg.encode(image)             # (H, W, 3) uint8 -> ImageEmbedding (cached)
    pred = seg.predict(emb, point_coords, point_labels)
"""

from ppd.prompts import PromptSet
from ppd.segmenter import ImageEmbedding, Prediction, Segmenter, load_segmenter

__version__ = "0.1.0"

__all__ = ["ImageEmbedding", "Prediction", "PromptSet", "Segmenter", "load_segmenter", "__version__"]

from ppd.envs import register_envs as _register_envs

_register_envs()
