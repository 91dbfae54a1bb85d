"""The README's configuration table against :class:`service.settings.Settings`: every setting is
listed, every name listed exists, and the defaults written there are the code's."""

from __future__ import annotations

import re

from pydantic_core import PydanticUndefined

from service.settings import Settings

from .readme_blocks import README

ROW = re.compile(r"^\| (`[^|]*`[^|]*) \| ([^|]*) \|")
NAME = re.compile(r"`([a-z_]+)`")
MIB = re.compile(r"^(\d+) MiB$")


def table() -> list[tuple[list[str], list[str]]]:
    """(names, defaults) of each row of the table under ``### Configuration``."""
    text = README.read_text()
    section = text.split("### Configuration", 1)[1].split("\n### ", 1)[0]
    rows = []
    for line in section.splitlines():
        m = ROW.match(line)
        if m is None or m.group(1).startswith("`setting`"):
            continue
        names = NAME.findall(m.group(1).split("(")[0])  # "(--flag)" notes are not settings
        defaults = [d.strip() for d in m.group(2).split(",")]
        rows.append((names, defaults))
    return rows


def written(default: object) -> str | None:
    """How the README writes a default, or None where it describes it in words."""
    if default is PydanticUndefined or default is None:
        return None
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, int) and default >= 2**20 and default % 2**20 == 0:
        return f"{default // 2**20} MiB"
    if isinstance(default, int) and default >= 10**6:
        return f"{default:,}".replace(",", " ")
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, str):
        return f"`{default}`"
    return str(default)


def test_every_setting_is_in_the_readme_and_only_those() -> None:
    listed = [n for names, _ in table() for n in names]
    assert len(listed) == len(set(listed)), "a setting is listed twice"
    fields = set(Settings.model_fields)
    assert not set(listed) - fields, "the README lists settings the code lacks"
    assert not fields - set(listed), "settings missing from the README's table"


def test_the_readme_defaults_are_the_code_defaults() -> None:
    checked = 0
    for names, defaults in table():
        if len(defaults) != len(names):
            continue  # one phrase for several settings ("none", "the four demo models")
        for name, text in zip(names, defaults, strict=True):
            want = written(Settings.model_fields[name].default)
            if want is None:
                assert text in {"none", "`{}`"} or not text[:1].isdigit(), (name, text)
                continue
            assert text.strip("`") == want.strip("`"), f"README: {name} = {text}; code: {want}"
            checked += 1
    assert checked >= 30
