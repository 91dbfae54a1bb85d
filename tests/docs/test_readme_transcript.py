"""docs/readme_transcript.md (written by scripts/readme_transcript.py, which runs every command
block of the README as written) must describe the README as it is now, and record no failure."""

from __future__ import annotations

import re

from tests.docs.readme_blocks import ROOT, blocks

TRANSCRIPT = ROOT / "docs" / "readme_transcript.md"


def test_transcript_matches_the_readme_blocks() -> None:
    text = TRANSCRIPT.read_text()
    recorded = re.findall(r"^<!-- block ([0-9a-f]{16}) -->$", text, re.M)
    current = [b.digest for b in blocks()]
    stale = [
        f"README.md:{b.line} ({b.section})"
        for b, old in zip(blocks(), recorded, strict=False)
        if b.digest != old
    ]
    assert recorded == current, (
        f"README blocks changed since the transcript ({stale or 'blocks added or removed'}): "
        "run .venv/bin/python scripts/readme_transcript.py"
    )
    assert "FAILED" not in text
