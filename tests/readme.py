"""The README's examples, as the tests run them: the fenced code blocks of one section.

    blocks = code_blocks("Testing your handlers")      # the ```python blocks under that heading

A section runs from its heading to the next heading of the same or a higher
level; its examples are run by the tests that exercise the feature, so an
example that stops working fails a test.
"""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def section(heading: str) -> str:
    """The text of the README section whose heading is ``heading`` (without its ``#`` marks)."""
    lines = README.read_text().splitlines()
    for start, line in enumerate(lines):
        marks = re.match(r"(#+) (.*)", line)
        if marks and marks.group(2).strip() == heading:
            level = len(marks.group(1))
            end = start + 1
            in_code = False
            while end < len(lines):
                if lines[end].startswith("```"):
                    in_code = not in_code
                elif not in_code and re.match(rf"#{{1,{level}}} ", lines[end]):
                    break
                end += 1
            return "\n".join(lines[start + 1 : end])
    raise LookupError(f"no section {heading!r} in {README}")


def code_blocks(heading: str, language: str = "python") -> list[str]:
    """The fenced ``language`` blocks of the section ``heading``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", section(heading), flags=re.S | re.M)
