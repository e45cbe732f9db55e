"""What does the on-disk embedding cache (``load_segmenter(cache_dir=...)``) save?

An official architecture, ``sam2.1_hiera_t`` with random weights (no checkpoint download),
a 480x640 image, CPU, 2 threads. Times the model fingerprint (once per process, on first
disk use), three encodes with the file written (the file removed before each), three
reads by fresh segmenters (fingerprint excluded; the OS file cache warm), and prints the
file size.

    python docs/experiments/embedding_cache_timing.py
"""
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ppd.models import _instantiate, official_model_config
from ppd.segmenter import load_segmenter

torch.set_num_threads(2)
torch.manual_seed(0)
tmp = Path(tempfile.mkdtemp())
torch.save({"model": _instantiate(official_model_config("sam2.1_hiera_t"), apply_postprocessing=True).state_dict()},
           tmp / "random.pt")
image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
cache = tmp / "embeddings"


def segmenter():
    return load_segmenter("sam2.1_hiera_t", checkpoint=tmp / "random.pt", device="cpu", cache_dir=cache)


first = segmenter()
t = time.perf_counter()
first.model_fingerprint()
print(f"fingerprint {time.perf_counter() - t:.3f} s")
encode, read = [], []
for _ in range(3):
    first.clear_cache()
    for f in cache.glob("*/*.pt"):
        f.unlink()
    t = time.perf_counter()
    first.encode(image)
    encode.append(time.perf_counter() - t)
for _ in range(3):
    seg = segmenter()
    seg._embedding_path("warm-up")  # the fingerprint, once per process
    t = time.perf_counter()
    seg.encode(image)
    read.append(time.perf_counter() - t)
    assert seg.cache_info["disk_hits"] == 1
sizes = [f.stat().st_size / 1e6 for f in cache.glob("*/*.pt")]
print("encode and write", [f"{x:.3f} s" for x in encode], "| read", [f"{1000 * x:.1f} ms" for x in read],
      f"| file {sizes[0]:.1f} MB")
