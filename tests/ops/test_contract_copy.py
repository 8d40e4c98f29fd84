"""Every revision of the steering design files is merged into the project's own copies.

``docs/design`` is the project's contract and grows with the code (new metrics, DLQ reasons, matrix
rows), so it is not a word-for-word copy of ``../shared/design``. What must not be lost is a revision:
each passage the steering copy marks as revised (``(rev. 2: …)``, ``Rev. 2: …``, ``… (rev. 2)``
and ``(…revised…)`` headings, the ``**Revision 2 …**`` paragraph) must stand in the project copy too.
"""

from __future__ import annotations

import re

import pytest

from tests.ops._contract import CONTRACT_PATH, SHARED_CONTRACT_DIR

pytestmark = pytest.mark.ops

_DESIGN_FILES = ["telemetry.md", "reliability.md", "style.md"]
_SPACE = re.compile(r"\s+")
# "(rev. 2: …)" with at most one level of nested parentheses inside
_PARENTHETICAL = re.compile(r"\((?:rev|Rev)\. \d+[^()]*(?:\([^()]*\)[^()]*)*\)")
# "Rev. 2: …" up to the end of its sentence (a full stop before a capital, a table cell's end, the block's end)
_SENTENCE = re.compile(r"(?<!\()Rev\. \d+: .*?(?:\.(?= [A-Z`*])|(?= \|)|$)")
_REVISION_PARAGRAPH = re.compile(r"^\*\*Revision \d+\b.*$")
_HEADING = re.compile(r"^#+ .*\((?:(?:rev|Rev)\. \d+|[^()]*\brevised\b[^()]*)\)$")


def _collapse(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _blocks(text: str) -> list[str]:
    """Paragraphs, with each table row and heading a block of its own, whitespace collapsed."""
    blocks: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.splitlines()
        if any(line.lstrip().startswith(("|", "#")) for line in lines):
            blocks.extend(_collapse(line) for line in lines if line.strip())
        else:
            blocks.append(_collapse(paragraph))
    return blocks


def revised_passages(text: str) -> list[str]:
    """The passages of a design file that carry a revision mark, as they must appear in a merged copy."""
    passages: list[str] = []
    for block in _blocks(text):
        if _REVISION_PARAGRAPH.match(block) or _HEADING.match(block):
            passages.append(block)
            continue
        passages.extend(_PARENTHETICAL.findall(block))
        passages.extend(match.group(0) for match in _SENTENCE.finditer(block))
    return passages


def test_revised_passages_are_found():
    """The extraction itself: each form of mark yields its passage (a test of the test's parser)."""
    sample = (
        "**Revision 2 (supersedes revision 1).** Revision 2 changes §3.\n\n"
        "### 4.0 Volume (rev. 2)\n\n"
        "## 2. Module map (target; revised after a review)\n\n"
        "| a | ERROR (rev. 2: a search must find it (see §1)) | x |\n"
        "| b | Rev. 2: no `error_type`, so alerts read closed series | y |\n\n"
        "Rev. 2: the keyword arguments are declared once. Other text (rev. 1 wrote them three times).\n"
    )
    assert revised_passages(sample) == [
        "**Revision 2 (supersedes revision 1).** Revision 2 changes §3.",
        "### 4.0 Volume (rev. 2)",
        "## 2. Module map (target; revised after a review)",
        "(rev. 2: a search must find it (see §1))",
        "Rev. 2: no `error_type`, so alerts read closed series",
        "(rev. 1 wrote them three times)",
        "Rev. 2: the keyword arguments are declared once.",
    ]


@pytest.mark.parametrize("name", _DESIGN_FILES)
def test_every_revision_is_merged(name):
    shared = SHARED_CONTRACT_DIR / name
    if not shared.exists():
        pytest.skip("no steering copy beside this checkout (../shared/design); the repo copy is used as is")
    project = _collapse((CONTRACT_PATH.parent / name).read_text(encoding="utf-8"))
    missing = [p for p in revised_passages(shared.read_text(encoding="utf-8")) if p not in project]
    assert not missing, (
        f"docs/design/{name} lacks these revised passages of ../shared/design/{name}: {missing}"
    )
