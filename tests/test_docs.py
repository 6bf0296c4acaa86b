"""Every relative link and image of README.md, BENCHMARKS.md and docs/ points to a file
that git tracks (a figure left untracked shows as a broken picture on the project page),
and no such file is hidden by ``.gitignore``."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(
    p.relative_to(ROOT).as_posix()
    for p in [ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").rglob("*.md")]
    if p.is_file()
)

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[`~]*[ \t]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)")  # within one line
_INLINE = re.compile(r"\]\(\s*(<[^>\n]*>|[^)\s]+)")  # [text](target "title"), ![alt](target)
_REF_DEF = re.compile(r"^ {0,3}\[[^\]\n]+\]:[ \t]*(<[^>\n]*>|\S+)", re.M)  # [id]: target
_HTML = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")


def relative_links(markdown: str) -> list[str]:
    """Targets of the relative links and images of ``markdown``, without ``#anchor`` or
    ``?query``, in order; web addresses, ``mailto:``, in-page anchors and anything inside
    code (fenced blocks, code spans) are left out."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", markdown))
    found = sorted(
        (m.start(), m.group(1)) for rx in (_INLINE, _REF_DEF, _HTML) for m in rx.finditer(text)
    )
    out = []
    for _, target in found:
        target = target.strip("<>").split("#", 1)[0].split("?", 1)[0]
        if target and not _SCHEME.match(target):
            out.append(unquote(target))
    return out


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def tracked() -> set[str]:
    try:
        res = _git("ls-files", "-z")
    except OSError:
        pytest.skip("git is not installed: cannot list the tracked files")
    if res.returncode != 0:
        pytest.skip(f"{ROOT} is not a git checkout (an unpacked sdist?): no tracked files")
    return set(res.stdout.split("\0")) - {""}


def test_relative_links_finds_links_and_images_but_not_urls_anchors_or_code() -> None:
    md = (
        'See [the design](docs/DESIGN.md#layers) and ![fig](figures/a%20b.png "title").\n'
        "[![badge](img/badge.svg)](https://example.org) [web](http://x.org/y.md)\n"
        '[mail](mailto:a@b.c) [here](#usage) <img src="docs/x.png" width=300>\n'
        '<a href="../up.md">up</a> `[not](code.md)` [`named.md`](named.md)\n'
        "```\n[not](fenced.md)\n```\n"
        "[ref]: <refs/target.md>\n"
    )
    assert relative_links(md) == [
        "docs/DESIGN.md",
        "figures/a b.png",
        "img/badge.svg",
        "docs/x.png",
        "../up.md",
        "named.md",
        "refs/target.md",
    ]


def _resolve(doc_dir: Path, target: str) -> str | None:
    """``target`` of a document in ``doc_dir`` as a path from the repository root (None
    outside it); a leading ``/`` is the repository root, as on GitHub."""
    start = ROOT if target.startswith("/") else doc_dir
    full = Path(os.path.normpath(start / target.lstrip("/")))
    try:
        return full.relative_to(ROOT).as_posix()
    except ValueError:
        return None


def _problems(markdown: str, doc_dir: Path, tracked: set[str]) -> list[str]:
    """One line per relative link of ``markdown`` (a file in ``doc_dir``) whose target is
    not in ``tracked`` (a file, or a folder holding one)."""
    problems = []
    for target in relative_links(markdown):
        rel = _resolve(doc_dir, target)
        if rel is None:
            problems.append(f"{target}: outside the repository")
        elif rel not in tracked and not any(t.startswith(rel + "/") for t in tracked):
            why = "exists but is not tracked by git" if (ROOT / rel).exists() else "does not exist"
            problems.append(f"{target}: {why}")
    return problems


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_points_to_a_tracked_file(doc: str, tracked: set[str]) -> None:
    path = ROOT / doc
    problems = _problems(path.read_text(encoding="utf-8"), path.parent, tracked)
    assert not problems, f"{doc}: broken links (git add the files):\n" + "\n".join(problems)


def test_link_check_reports_missing_untracked_and_outside_targets() -> None:
    """The check itself can fail: a missing target, a file git does not track, a path
    out of the repository; a tracked file and a folder holding one pass."""
    md = "![gone](figures/none.png) [ok](DESIGN.md) [b](../BENCHMARKS.md) [up](../../x.md) [d](.)"
    assert _problems(md, ROOT / "docs", {"docs/DESIGN.md"}) == [
        "figures/none.png: does not exist",
        "../BENCHMARKS.md: exists but is not tracked by git",
        "../../x.md: outside the repository",
    ]


@pytest.mark.usefixtures("tracked")
def test_linked_files_are_not_hidden_by_gitignore() -> None:
    """A figure added to docs/figures/ is committed by a plain ``git add``."""
    targets = {"docs/figures/new_figure.png"}
    for doc in DOCS:
        path = ROOT / doc
        for target in relative_links(path.read_text(encoding="utf-8")):
            rel = _resolve(path.parent, target)
            if rel is not None:
                targets.add(rel)
    res = _git("check-ignore", "--no-index", "--verbose", *sorted(targets))
    assert res.returncode == 1, f"ignored by .gitignore:\n{res.stdout}"
