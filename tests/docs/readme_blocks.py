"""The fenced code blocks of ``README.md``, each with the headings it sits under, and a clean copy
of the checkout to run them in, so a test or script can run the README's commands exactly as
written."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

__all__ = ["README", "Block", "blocks", "clean_copy", "section_block"]

_FENCE = re.compile(r"^```(\w*)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # 1-based line of the opening fence
    headings: tuple[str, ...]  # enclosing headings, outermost first

    @property
    def section(self) -> str:
        return self.headings[-1] if self.headings else ""

    @property
    def digest(self) -> str:
        """Short content hash: what a transcript of the block was made from."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def blocks(path: Path = README) -> list[Block]:
    out: list[Block] = []
    headings: list[tuple[int, str]] = []
    lang: str | None = None
    body: list[str] = []
    start = 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fence = _FENCE.match(line)
        if lang is not None:
            if line.strip() == "```":
                titles = tuple(t for _, t in headings)
                out.append(Block(lang, "\n".join(body) + "\n", start, titles))
                lang = None
            else:
                body.append(line)
        elif fence:
            lang, body, start = fence.group(1), [], n
        elif heading := _HEADING.match(line):
            level = len(heading.group(1))
            headings = [(lv, t) for lv, t in headings if lv < level] + [(level, heading.group(2))]
    return out


def section_block(section: str, lang: str = "bash", index: int = 0) -> Block:
    """The ``index``-th ``lang`` block directly under the heading ``section``."""
    found = [b for b in blocks() if b.section == section and b.lang == lang]
    if len(found) <= index:
        raise LookupError(f"README.md has no {lang} block {index} under {section!r}")
    return found[index]


def clean_copy(dest: Path) -> Path:
    """The files a checkout of this tree would have (tracked, and new files git does not ignore;
    none of the ignored build outputs), with this checkout's ``.venv`` linked in. Modification
    times are kept, so make sees the venv as up to date. A venv older than ``pyproject.toml``
    is refused: make would reinstall it from the copy, pointing the shared editable install at
    a temporary directory."""
    stamp, project = ROOT / ".venv" / ".installed", ROOT / "pyproject.toml"
    if not stamp.is_file() or stamp.stat().st_mtime < project.stat().st_mtime:
        raise RuntimeError(".venv is older than pyproject.toml: run `make venv` first")
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in filter(None, names):
        src = ROOT / os.fsdecode(raw)
        if src.is_file():  # a tracked file deleted in the working tree is left out
            (dest / src.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / src.relative_to(ROOT))
    (dest / ".venv").symlink_to(ROOT / ".venv")
    return dest
