"""The documentation: a short README, links that resolve, a design page that matches the tree."""

import collections
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DESIGN = ROOT / "docs" / "design.md"
MAX_README_LINES = 300
# Where the modules that docs/design.md lists live: these folders, walked, and train.py.
MODULE_FOLDERS = ("gradmask_tf", "eval")
MODULE_FILES = ("train.py",)

_FENCED = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _pages():
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(text):
    """The targets of a Markdown text's inline links and images, outside code."""
    text = _INLINE_CODE.sub("", _FENCED.sub("", text))
    targets = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        targets.append(target.split("#", 1)[0])
    return targets


def test_relative_links_finds_links_and_images_outside_code():
    text = (
        "See [the spec](METHOD.md#2-the-op), ![a figure](results/forest.png) and\n"
        "[the paper](https://arxiv.org/abs/2208.06918), [here](#usage).\n"
        "`[not a link](nowhere.md)`\n```python\nx = [a](b)\n```\n"
    )
    assert relative_links(text) == ["METHOD.md", "results/forest.png"]


def test_readme_is_short():
    num_lines = len(README.read_text().splitlines())
    assert num_lines <= MAX_README_LINES, (
        f"README.md has {num_lines} lines, at most {MAX_README_LINES} expected: move detail "
        "to a page under docs/ and link it"
    )


@pytest.mark.parametrize("page", _pages(), ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    targets = relative_links(page.read_text())
    broken = [t for t in targets if not (page.parent / t).exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_readme_and_results_link_their_pages_and_figures():
    # The link check above passes vacuously on a page without links; these must be there.
    readme = set(relative_links(README.read_text()))
    for page in ("training", "evaluation", "studies", "results", "speed", "design"):
        assert f"docs/{page}.md" in readme, f"README.md does not link docs/{page}.md"
    results = relative_links((ROOT / "docs" / "results.md").read_text())
    assert any(target.endswith(".png") for target in results)


def modules_in_tree():
    """Every Python module of gradmask_tf/, eval/ and train.py, as a path from the root."""
    modules = {name for name in MODULE_FILES if (ROOT / name).is_file()}
    for folder in MODULE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                modules.add(path.relative_to(ROOT).as_posix())
    return modules


def modules_listed(text):
    """The modules the design page lists, with their counts.

    A module is listed by a line (a table row or a list item) that starts with its path
    in backticks; a path mentioned inside a sentence is not an entry.
    """
    pattern = r"^(?:\| |- )?`((?:%s)/[\w/]+\.py|%s)`" % (
        "|".join(MODULE_FOLDERS),
        "|".join(re.escape(name) for name in MODULE_FILES),
    )
    return collections.Counter(re.findall(pattern, text, re.M))


def test_design_lists_exactly_the_modules_in_the_tree():
    tree = modules_in_tree()
    assert "train.py" in tree and len(tree) > 10, tree  # the walk found the tree
    listed = modules_listed(DESIGN.read_text())
    missing = sorted(tree - set(listed))
    gone = sorted(set(listed) - tree)
    twice = sorted(module for module, count in listed.items() if count > 1)
    assert not missing, f"docs/design.md does not list these modules: {missing}"
    assert not gone, f"docs/design.md lists modules that do not exist: {gone}"
    assert not twice, f"docs/design.md lists these modules more than once: {twice}"


def test_modules_listed_reads_entries_only():
    text = (
        "| `gradmask_tf/ops/mean.py` | x |\n- `eval/gsnr.py`: y\n"
        "Here `train.py` parses flags, as `eval/cli.py` does, and `tests/idx.py` is no module.\n"
        "| `train.py` | the training command |\n"
    )
    assert modules_listed(text) == {"gradmask_tf/ops/mean.py": 1, "eval/gsnr.py": 1, "train.py": 1}
