"""The README's Python quick start runs as written and prints what it promises."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _quick_start() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no python block under 'Python quick start'"
    return match.group(1)


def test_quick_start_runs_as_written():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_quick_start(), str(README), "exec"), {})
    m = re.fullmatch(r"clicks (\d+) -> (\d+), IoU (\d\.\d{3}) -> (\d\.\d{3})\n", out.getvalue())
    assert m, out.getvalue()
    k_in, k_out = int(m.group(1)), int(m.group(2))
    assert k_in == 8 and 1 <= k_out <= k_in
