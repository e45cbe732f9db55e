"""Does ``report.html`` open in a browser without errors, and does it look right?

    python docs/experiments/report_opens_in_chromium.py [--report DIR/report.html] [--out DIR]
        [--height PX]

Without ``--report`` it writes the synthetic report of ``tests/bench/test_report.py`` (two
32 x 32 domains, two protocols, no model) into ``--out``. The page is opened in headless
Chromium (``apt-get update && apt-get install -y chromium`` when missing) with console
logging on; the script prints Chromium's console messages and failed loads, checks that the
screenshot is not blank, and saves ``screenshot.png`` (1200 px wide, ``--height`` tall)
next to the report for a person to look at. Exit status 1 when the page logged an error
or a resource failed to load, 2 when no Chromium is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# console errors and failed loads; Chromium's own start-up noise (dbus, GPU) is not the page's
PAGE_PROBLEM = re.compile(r"CONSOLE|Uncaught|net::ERR_|Failed to load|Not allowed to load", re.I)


def synthetic_report(out: Path) -> Path:
    """Write the tests' synthetic run as a report into ``out``; return report.html."""
    spec = importlib.util.spec_from_file_location("synthetic_report_run", ROOT / "tests/bench/test_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from ppd.bench.report import write_report
    from ppd.bench.stats import summarize

    results, protocols, examples, load_scene, meta = module.synthetic_run()
    summary = summarize(results, protocols)
    return write_report(out, results, summary, protocols, examples, load_scene, meta)["report.html"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, help="an existing report.html (default: write a synthetic one)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/ppd_report_check"), help="where the synthetic report goes")
    ap.add_argument("--height", type=int, default=3000, help="window height of the screenshot in pixels")
    a = ap.parse_args()
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        print("no Chromium found: apt-get update && apt-get install -y chromium", file=sys.stderr)
        return 2
    page = a.report.resolve() if a.report else synthetic_report(a.out).resolve()
    shot = page.parent / "screenshot.png"
    shot.unlink(missing_ok=True)
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
           "--v=0", f"--screenshot={shot}", f"--window-size=1200,{a.height}", page.as_uri()]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    problems = [ln for ln in (run.stdout + run.stderr).splitlines() if PAGE_PROBLEM.search(ln)]
    text = page.read_text(encoding="utf-8")
    external = re.findall(r"""(?:src|href)\s*=\s*["']?(?!data:|#)([^"'\s>]+)""", text, re.I)
    problems += [f"not self-contained: refers to {ref}" for ref in external]
    print(f"report:     {page} ({page.stat().st_size / 1e6:.2f} MB)")
    print(f"chromium:   {browser}, exit {run.returncode}")
    print(f"screenshot: {shot if shot.is_file() else 'none written'}")
    if shot.is_file():
        import numpy as np
        from PIL import Image

        pixels = np.asarray(Image.open(shot).convert("RGB"))
        coloured = float((pixels.max(-1).astype(int) - pixels.min(-1) > 60).mean())
        print(f"            {pixels.shape[1]} x {pixels.shape[0]} px, {coloured:.1%} strongly coloured (figures drawn)")
        if coloured < 0.01:
            problems.append("the screenshot has almost no colour: the figures did not render")
    for line in problems:
        print(f"PROBLEM: {line}")
    print("page problems: none" if not problems else f"page problems: {len(problems)}")
    return 1 if problems or run.returncode or not shot.is_file() else 0


if __name__ == "__main__":
    sys.exit(main())
