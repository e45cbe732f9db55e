"""Dual-space patch graphs over SAM2 image embeddings.

Nodes are patches on a G x G grid over the image, with the pooled embedding as features;
edges join each node to its nearest nodes in image space (physical) and in feature space
(semantic). See :mod:`ppd.graphs.dual_space` for the conventions.
"""

from .dual_space import (
    EDGE_BOTH,
    EDGE_PHYSICAL,
    EDGE_SEMANTIC,
    build_dual_space_graph,
    patch_centres,
    patch_index,
    patch_mean,
    to_networkx,
)

__all__ = [
    "EDGE_BOTH",
    "EDGE_PHYSICAL",
    "EDGE_SEMANTIC",
    "build_dual_space_graph",
    "patch_centres",
    "patch_index",
    "patch_mean",
    "to_networkx",
]
