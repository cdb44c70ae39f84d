"""The docs cannot rot quietly: generated reference pages match the code, every relative link and
anchor in README.md and docs/ resolves, the nav of mkdocs.yml and the pages agree, the API page
names what is public, and (when mkdocs is installed) the strict site build is clean.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

from tool_scripts import load_tool

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_BYTES = 10 * 1024  # issue 26: a short front page; the detail lives in docs/


def load_generator():
    return load_tool("docs_reference")


# ---------------------------------------------------------------- markdown links and anchors

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""(?:href|src)=["']([^"']+)["']""")
SNIPPET = re.compile(r"""^--8<--\s+["']([^"']+)["']\s*$""")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def expand_snippets(text: str) -> str:
    """pymdownx.snippets' `--8<-- "path"` lines (path from the repository root), as the site shows them."""
    return "\n".join((ROOT / m[1]).read_text() if (m := SNIPPET.match(line)) and (ROOT / m[1]).exists() else line
                     for line in text.split("\n"))


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `[x](y)` in a code sample is no link)."""
    lines, fenced = [], False
    for line in text.split("\n"):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def heading_text(markdown: str) -> str:
    """A heading's text as rendered: code spans kept, links reduced to their text, escapes and
    emphasis markers (not intraword underscores) dropped."""
    parts = re.split(r"(`[^`]*`)", markdown)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(part[1:-1])
            continue
        part = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", part)
        part = re.sub(r"\{#[^}]*\}", "", part)
        part = part.replace("*", "")
        part = re.sub(r"(?<!\\)(?:(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))", "", part)
        out.append(re.sub(r"\\(.)", r"\1", part))
    return "".join(out).strip()


def slug_python_markdown(text: str) -> str:
    """Python-Markdown's toc slugify (the ids of the MkDocs site)."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def slug_github(text: str) -> str:
    """GitHub's heading ids (README.md and the pages as GitHub renders them)."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every id a link may name in `path`: headings (site and GitHub spellings, repeats numbered),
    `{#id}` attributes and HTML id/name attributes."""
    text = expand_snippets(path.read_text())
    found, seen_site, seen_github = set(), {}, {}
    for line in prose_lines(text):
        match = HEADING.match(line)
        if match:
            title = heading_text(match[2])
            for slug, seen, sep in ((slug_python_markdown(title), seen_site, "_"), (slug_github(title), seen_github, "-")):
                found.add(f"{slug}{sep}{seen[slug]}" if slug in seen else slug)
                seen[slug] = seen.get(slug, 0) + 1
            found.update(re.findall(r"\{#([^}\s]+)", match[2]))
        found.update(re.findall(r"""\b(?:id|name)=["']([^"']+)["']""", line))
    return found


def link_targets(path: Path) -> list[str]:
    """The link and image targets of a markdown file, outside code blocks and code spans."""
    targets = []
    for line in prose_lines(expand_snippets(path.read_text())):
        line = re.sub(r"`[^`]*`", "", line)
        targets += LINK.findall(line) + HTML_LINK.findall(line)
    return targets


def broken_links(path: Path, site_root: Path | None) -> list[str]:
    """Relative links of `path` that name a missing file or a missing heading; with `site_root`,
    also links that leave it (the site holds only the docs folder)."""
    problems = []
    for target in link_targets(path):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path.resolve()
        where = f"{path.relative_to(ROOT)}: ({target})"
        if site_root is not None and not resolved.is_relative_to(site_root.resolve()):
            problems.append(f"{where} leaves {site_root.relative_to(ROOT)}/, which the site does not hold; "
                            "name the file as `code` instead")
        elif not resolved.exists():
            problems.append(f"{where}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading or id '#{anchor}' in {resolved.relative_to(ROOT)}")
    return problems


def doc_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_every_relative_link_and_anchor_resolves():
    problems = broken_links(README, None)
    for page in doc_pages():
        problems += broken_links(page, DOCS)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_checker_sees_broken_links_and_anchors(tmp_path, monkeypatch):
    """The check above is only worth something if it fails: a missing file, a missing heading and
    a link out of the site are each reported; code samples and good links are not."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    site = tmp_path / "docs"
    site.mkdir()
    (tmp_path / "outside.md").write_text("# Outside\n")
    (site / "b.md").write_text("# Title of B\n\n## Data formats: `coco`, voc\n\n## Data formats: `coco`, voc\n")
    (site / "a.md").write_text(
        "[ok](b.md#data-formats-coco-voc) [second](b.md#data-formats-coco-voc_1) [self](#a-page)\n"
        "# A page\n[gone](missing.md) [no anchor](b.md#nowhere) [out](../outside.md)\n"
        "```\n[in code](not-checked.md)\n```\n`[in a span](not-checked.md)` [web](https://example.com/x)\n")
    problems = broken_links(site / "a.md", site)
    assert len(problems) == 3, problems
    assert "missing.md" in problems[0] and "no such file" in problems[0]
    assert "#nowhere" in problems[1]
    assert "leaves docs/" in problems[2]


# ---------------------------------------------------------------- nav


def nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_nav_and_pages_agree():
    """Every page the nav names exists, and no page under docs/ is left out of the nav."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = nav_pages(config["nav"])
    missing = [page for page in listed if not (DOCS / page).is_file()]
    assert not missing, f"mkdocs.yml nav names pages that do not exist: {missing}"
    assert len(listed) == len(set(listed)), "a page is listed twice in the nav"
    orphans = [p.relative_to(DOCS).as_posix() for p in doc_pages() if p.relative_to(DOCS).as_posix() not in listed]
    assert not orphans, f"pages under docs/ missing from the nav of mkdocs.yml: {orphans}"


# ---------------------------------------------------------------- generated pages


def test_generated_reference_pages_are_current():
    generator = load_generator()
    stale = [path.relative_to(ROOT).as_posix() for path, text in generator.pages().items()
             if not path.exists() or path.read_text() != text]
    assert not stale, f"{', '.join(stale)} differ from the code; run `python tools/docs_reference.py`"


def test_cli_reference_has_every_command_and_option():
    from detector.cli import build_parser

    generator = load_generator()
    page = generator.CLI_PAGE.read_text()
    for name, command in generator.subcommands(build_parser()).items():
        assert f"## detector {name}\n" in page
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                listed = f"`{option}" in page or f", {option}" in page  # not in the assert: pytest would print the page
                assert listed, f"detector {name} {option} is not on docs/reference/cli.md"


def test_config_reference_has_every_key_with_its_default():
    """Every leaf key of the loaded defaults is on the page, with the default the code uses."""
    from detector.config import config_to_dict, load_config

    page = load_generator().CONFIG_PAGE.read_text()
    flat = {}

    def walk(data, prefix=""):
        for key, value in data.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(config_to_dict(load_config()))
    for key, value in flat.items():
        row = re.search(rf"^\| `{re.escape(key)}` \| `([^`]*)` \|", page, re.M)
        assert row, f"config key {key} is not on docs/reference/config.md"
        assert yaml.safe_load(row[1]) == value, f"{key}: page says {row[1]}, the code {value!r}"


def test_config_reader_follows_comments_and_refuses_what_it_cannot_read():
    generator = load_generator()
    header, entries = generator.parse_commented_yaml(
        "# The header.\n# Second line.\nsection:            # about the section\n"
        "  key: 3           # first line\n                     #   continues it\n"
        "                     # a new line\n  other: [1, 2]\ntop: null\n", "x.yaml")
    assert header == "The header. Second line."
    assert [(e["key"], e["value"], e["comment"], e["section"]) for e in entries] == [
        ("section", "", "about the section", True), ("section.key", "3", "first line continues it\na new line", False),
        ("section.other", "[1, 2]", "", False), ("top", "null", "", False)]
    with pytest.raises(SystemExit, match="x.yaml:3"):  # a block list is not one key per line
        generator.parse_commented_yaml("a:\n  b:\n    - 1\n", "x.yaml")
    text = "a: {b: 1}\n"  # a flow mapping hides key a.b from the line reader: YAML itself disagrees
    with pytest.raises(SystemExit, match="disagree"):
        generator.check_parse(generator.parse_commented_yaml(text, "y.yaml")[1], text, "y.yaml")


# ---------------------------------------------------------------- API page


def api_names() -> list[str]:
    return re.findall(r"^::: ([\w.]+)", (DOCS / "reference" / "api.md").read_text(), re.M)


def resolve(dotted: str):
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        module, _, attribute = dotted.rpartition(".")
        return getattr(importlib.import_module(module), attribute)


def test_api_reference_names_import_and_cover_the_public_api():
    import detector

    documented = [resolve(name) for name in api_names()]  # an ImportError / AttributeError names the entry
    modules = {obj.__name__ for obj in documented if isinstance(obj, type(detector))}
    left_out = [name for name in detector.__all__
                if not any(getattr(detector, name) is obj for obj in documented)
                and getattr(getattr(detector, name), "__module__", None) not in modules]
    assert not left_out, f"detector.__all__ names missing from docs/reference/api.md: {left_out}"


# ---------------------------------------------------------------- README and the build


def test_readme_is_short_and_reaches_every_reference_in_one_click():
    text = README.read_text()
    size = len(text.encode())
    assert size <= README_MAX_BYTES, (f"README.md is {size} bytes (at most {README_MAX_BYTES}): "
                                      "move the detail into a page under docs/ and link it")
    assert "bash tools/test.sh" in text  # the test command CI runs (.ci/run)
    targets = link_targets(README)
    for page in ("docs/reference/cli.md", "docs/reference/config.md", "docs/reference/api.md"):
        assert page in targets, f"README.md does not link {page}: flags, keys and functions must be two clicks away"


def test_strict_site_build(tmp_path):
    missing = [name for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers")
               if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (pip install -e '.[docs]'): the strict build is not checked")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-3000:]}{result.stderr[-6000:]}"
    assert (tmp_path / "site" / "reference" / "api" / "index.html").read_text().count('class="doc doc-heading"') >= len(api_names())
