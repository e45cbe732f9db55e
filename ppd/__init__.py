"""ppd: point prompts for SAM2, made better by reinforcement learning.

Public API (docs/design.md)::

    import ppd
    seg = ppd.load_segmenter()          # bundled sam2-tiny-synthetic, CPU friendly
    emb = seg.encode(image)             # (H, W, 3) uint8 -> ImageEmbedding (cached)
    pred = seg.predict(emb, point_coords, point_labels)
"""

__version__ = "0.1.0"

__all__ = [
    "ImageEmbedding", "Prediction", "PromptSet", "Segmenter", "load_segmenter", "__version__",
    "PromptDefender", "RefineResult", "NoRefine", "RandomDrop", "GreedyScoreFilter",
    "ConsistencyFilter", "MaskConsensusFilter",
]

# Every name loads on first use: the segmenter pulls in torch, the agents
# stable-baselines3 and torch-geometric, and `ppd --help` needs none of them.
_LAZY = {
    "ImageEmbedding": "ppd.segmenter",
    "Prediction": "ppd.segmenter",
    "Segmenter": "ppd.segmenter",
    "load_segmenter": "ppd.segmenter",
    "PromptSet": "ppd.prompts",
    "PromptDefender": "ppd.agents.defender",
    "RefineResult": "ppd.agents.defender",
    "NoRefine": "ppd.agents.baselines",
    "RandomDrop": "ppd.agents.baselines",
    "GreedyScoreFilter": "ppd.agents.baselines",
    "ConsistencyFilter": "ppd.agents.baselines",
    "MaskConsensusFilter": "ppd.agents.baselines",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ppd' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


from ppd.envs import register_envs as _register_envs

_register_envs()
