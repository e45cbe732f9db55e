"""How do feature matching and its refiners do on a dataset laid out as FSS-1000 (a folder per class)?

    python docs/experiments/oneshot_class_folders.py --work DIR [--domains train,texture,clutter]
        [--classes 10] [--images 5] [--defender bundled ...] [--threads 2]

Writes, per procedural domain, ``--classes`` object classes
(:func:`ppd.data.oneshot_pairs.draw_class`) with ``--images`` scenes each
(:func:`~ppd.data.oneshot_pairs.render_class_scene`: one instance of the class among the
domain's other objects and distractors) as ``DIR/DOMAIN/CLASS/I.jpg`` + ``I.png`` (the
instance's binary mask, FSS-1000's layout), then runs

    ppd bench --data DOMAIN=DIR/DOMAIN ... --protocol oneshot --defender bundled --out DIR/bench

so each image is a target whose reference is another image of its class, as in the PPD
paper's one-shot setting. Classes are drawn from ``default_rng([SEED, domain index, class])``
and the scenes from that class's stream: the same files on every machine. JPEG quality 95,
as photographs come.

Prints the ``ppd bench`` command, then its summary lines (mIoU with 95% intervals).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ppd.data.oneshot_pairs import draw_class, render_class_scene
from ppd.data.scenes import DOMAINS

SEED = 31_000_000


def write_domain(root: Path, domain: str, n_classes: int, n_images: int) -> None:
    d = DOMAINS.index(domain)
    for c in range(n_classes):
        rng = np.random.default_rng([SEED, d, c])
        cls = draw_class(rng, domain)
        folder = root / domain / f"{c:02d}_{cls.shape}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_images):
            scene = render_class_scene(np.random.default_rng([SEED, d, c, i]), domain, cls, on_top=i == 0)
            mask = np.any(scene.masks[scene.meta["class_objects"]], axis=0)
            Image.fromarray(scene.image).save(folder / f"{i}.jpg", quality=95)
            Image.fromarray((mask * 255).astype(np.uint8)).save(folder / f"{i}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="folder for the class folders and the bench output")
    ap.add_argument("--domains", default="train,texture,clutter")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--defender", nargs="*", default=["bundled"], help="ppd train run folders, or bundled")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    work = Path(a.work)
    domains = a.domains.split(",")
    for domain in domains:
        if not (work / domain).is_dir():
            write_domain(work, domain, a.classes, a.images)
    cmd = ["ppd", "bench", *(x for d in domains for x in ("--data", f"{d}={work / d}")), "--protocol", "oneshot",
           *(x for r in a.defender for x in ("--defender", r)), "--threads", str(a.threads), "--out", str(work / "bench")]
    print(" ".join(cmd), flush=True)
    # the ppd of this interpreter, whether or not its environment is on PATH
    sys.exit(subprocess.call([sys.executable, "-c", "import sys; from ppd.cli import main; sys.exit(main())", *cmd[1:]]))


if __name__ == "__main__":
    main()
