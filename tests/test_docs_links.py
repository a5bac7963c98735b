"""The README and the pages under ``docs/``: every relative link points at a file that exists
(and at a heading of it, for ``page.md#anchor``), and every page is reachable from the README.
Reads text only (no network, no dode import)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]

#: ``[text](target)`` and ``![alt](target)``; the target ends at the first space or ``)``
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")


def links(page: Path) -> list[str]:
    """The link targets of a Markdown page, outside fenced code blocks and inline code."""
    out, in_fence = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            in_fence = not in_fence
            continue
        if not in_fence:
            out += LINK.findall(re.sub(r"`[^`]*`", "", line))
    return out


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to ``-``."""
    out, in_fence = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            in_fence = not in_fence
        elif not in_fence and re.match(r"^#{1,6} ", line):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def relative(target: str) -> bool:
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in links(page):
            if relative(target):
                path, _, anchor = target.partition("#")
                file = page.parent / path if path else page
                if not file.exists():
                    broken.append(f"{page.relative_to(ROOT)}: {target}")
                elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    seen, todo = set(), [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page in seen or not page.exists() or page.suffix != ".md":
            continue
        seen.add(page)
        for target in links(page):
            if relative(target):
                todo.append((page.parent / target.split("#", 1)[0]).resolve())
    missing = [p.relative_to(ROOT).as_posix() for p in DOCS if p.resolve() not in seen]
    assert not missing, f"docs pages no link from the README leads to: {missing}"


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines; move detail into docs/ (at most 250)"


def test_the_link_pattern():
    assert LINK.findall("see [a](docs/a.md#x) and ![p](img.png) and [w](https://x.y)") == [
        "docs/a.md#x",
        "img.png",
        "https://x.y",
    ]
    assert not relative("https://x.y") and relative("#anchor") and relative("docs/a.md")
    page = ROOT / "docs" / "commands.md"
    assert "python--m-dodeevaluate-n-samples-scored" in anchors(page)
