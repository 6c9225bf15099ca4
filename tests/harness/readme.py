"""The README's runnable parts, read at test time so the tests follow the README
as it is written: its fenced blocks, the tour's commands, the sidecar config it
writes with a heredoc, and its Python snippets."""

from __future__ import annotations

from pathlib import Path

__all__ = ["README", "fenced_blocks", "readme_sidecar_config"]

README = Path(__file__).parents[2] / "README.md"


def fenced_blocks(language: str, after: str, before: str | None = None) -> list[str]:
    """The bodies of the README's ```language blocks after the text `after`
    (and before the text `before`, when given), in order."""
    readme = README.read_text(encoding="utf-8")
    start = readme.index(after) + len(after)
    end = readme.index(before, start) if before is not None else len(readme)
    section = readme[start:end]
    opening = f"```{language}\n"
    blocks: list[str] = []
    while opening in section:
        body = section.split(opening, 1)[1]
        block, section = body.split("\n```", 1)
        blocks.append(block + "\n")
    return blocks


def readme_sidecar_config() -> str:
    """The my-sidecar.yaml the README writes with ``cat > my-sidecar.yaml <<'EOF'``."""
    readme = README.read_text(encoding="utf-8")
    start = readme.index("cat > my-sidecar.yaml <<'EOF'\n")
    body = readme[start:].split("\n", 1)[1]
    return body[: body.index("\nEOF\n") + 1]
