"""README.md and docs/ stay true to the tree: every relative link names a file that exists (and,
with `#anchor`, a heading that exists in it), and the README names the two set-up commands, both
of them Makefile targets (developers' guide: "a fresh clone plus two commands from README.md").
The results pages under benchmarks/results/ link into docs/ and are checked the same way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS_PAGES = sorted((ROOT / "benchmarks" / "results").rglob("*.md"))

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.M)


def prose(text: str) -> str:
    """The page without code: links inside fenced blocks or inline code are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    return LINK.findall(prose(text))


def anchors(text: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped (not `-` or `_`), spaces as `-`,
    a repeated id suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for title in HEADING.findall(FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    text = page.read_text()
    broken = []
    for target in links(text):
        # http:, https:, mailto: are not checked (no network)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(
                f"{target} (no file {dest.relative_to(root) if dest.is_relative_to(root) else dest})"
            )
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    return broken


def test_there_are_pages_and_links_to_check():
    assert (ROOT / "docs").is_dir() and len(PAGES) > 1
    assert sum(len(links(p.read_text())) for p in PAGES) > 20


@pytest.mark.parametrize(
    "page",
    PAGES + RESULTS_PAGES,
    ids=[p.relative_to(ROOT).as_posix() for p in PAGES + RESULTS_PAGES],
)
def test_every_relative_link_resolves(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: broken links {broken_links(page)}"


def test_readme_links_every_docs_page():
    readme = links((ROOT / "README.md").read_text())
    for page in PAGES[1:]:
        name = page.relative_to(ROOT).as_posix()
        assert any(t.partition("#")[0] == name for t in readme), f"README.md does not link {name}"


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def test_readme_names_both_setup_commands_and_they_are_makefile_targets():
    text = (ROOT / "README.md").read_text()
    blocks = "\n".join(FENCE.findall(text))
    for command in ("make demo", "make test"):
        assert re.search(rf"^{command}\b", blocks, re.M), (
            f"README.md has no code line starting {command!r}"
        )
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", text))
    assert {"demo", "test", "ui", "dashboard"} <= named
    assert named <= makefile_targets(), (
        f"README names make targets the Makefile lacks: {named - makefile_targets()}"
    )


def test_the_checker_finds_a_broken_file_and_a_broken_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A title\n\n## Two (words)\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#two-words) [bad](docs/b.md) [bad anchor](docs/a.md#three) "
        "`[in code](nowhere.md)` [web](https://example.org/x.md)\n```\n[fenced](nowhere.md)\n```\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "docs/b.md (no file docs/b.md)",
        "docs/a.md#three (no heading #three in a.md)",
    ]


def test_internals_names_every_package_and_entry_module():
    """docs/internals.md's layout names every sub-package of the code and every flat module of
    pipeline/'s entry layer (a new one is documented where it is added)."""
    text = (ROOT / "docs" / "internals.md").read_text()
    names = set()
    for top in ("pipeline", "training", "sparse", "attacks"):
        assert f"{top}/" in text, f"docs/internals.md does not name {top}/"
        names |= {f"{p.parent.name}/" for p in (ROOT / top).glob("*/__init__.py")}
    names |= {p.stem for p in (ROOT / "pipeline").glob("*.py")} - {"__init__"}
    missing = sorted(n for n in names if not re.search(rf"(?<![\w/]){re.escape(n)}(?!\w)", text))
    assert not missing, f"docs/internals.md's Layout does not name {missing}: add each with its job"


FILE_NAMED = re.compile(
    r"(?<![\w/.])((?:pipeline|training|sparse|attacks|tests|benchmarks|examples|conf)/[\w./-]*\.(?:py|yaml|md|json))\b"
)


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_file_the_page_names_exists(page):
    """A module moved (pipeline/training.py -> training/loops.py) leaves no stale path behind,
    in links, code spans or code blocks."""
    named = set(FILE_NAMED.findall(page.read_text()))
    assert not sorted(n for n in named if not (ROOT / n).exists()), (
        f"{page.relative_to(ROOT)} names missing files: {sorted(n for n in named if not (ROOT / n).exists())}"
    )
