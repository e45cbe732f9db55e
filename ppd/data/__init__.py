"""Scenes for training and testing: the procedural generator and real-dataset loaders."""

from ppd.data.loaders import CocoDataset, ImageMaskFolder, load_coco, load_image_mask_folder
from ppd.data.scenes import DOMAINS, HELDOUT_DOMAIN, SHIFTED_DOMAINS, TRAIN_DOMAIN, ProceduralScenes, make_scene
from ppd.data.types import Scene

__all__ = [
    "DOMAINS", "HELDOUT_DOMAIN", "SHIFTED_DOMAINS", "TRAIN_DOMAIN",
    "CocoDataset", "ImageMaskFolder", "ProceduralScenes", "Scene",
    "load_coco", "load_image_mask_folder", "make_scene",
]
