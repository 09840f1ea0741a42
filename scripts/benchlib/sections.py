"""Sections of BENCHMARKS.md: one measured on its own replaces its earlier version in place."""

from __future__ import annotations


def replace_section(markdown_text: str, section: str, insert_before: tuple[str, ...] = ("## Method",)) -> str:
    """``markdown_text`` with the section titled as ``section``'s first line replaced by ``section``.

    A file without that section gets it before the first heading that starts
    with one of ``insert_before``, or at the end.
    """
    title = section.strip().splitlines()[0]
    lines = markdown_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line == title), None)
    if start is not None:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    else:
        start = end = next(
            (i for i, line in enumerate(lines) if any(line.startswith(h) for h in insert_before)), len(lines)
        )
    block = section.strip().splitlines() + [""]
    if start and lines[start - 1].strip():
        block.insert(0, "")  # appended after text: a blank line before its heading
    return "\n".join(lines[:start] + block + lines[end:]).rstrip("\n") + "\n"
