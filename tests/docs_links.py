#!/usr/bin/env python3
"""Checks the documentation's links and the README's shape.

    python3 tests/docs_links.py [REPO_ROOT]

For README.md and docs/*.md: every relative link (inline, image, reference definition, HTML
href/src) must point at a file or folder that exists inside the repository, and every `#anchor`
into a Markdown page at one of its headings, slugged as GitHub does (lowercase; letters, digits,
'-', '_' and spaces kept, everything else dropped; spaces become '-'; repeats get -1, -2, ...).
README.md must be at most 130 lines and begin (after its title) with the code block of the two
set-up commands, ./run.sh then ./test.sh. Links inside code are not links. Prints every problem
as FILE:LINE: ... and exits 1 if there is any.
"""
import re
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote

README_MAX_LINES = 130
SETUP_COMMANDS = ("./run.sh", "./test.sh")

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(?!`)([\s\S]*?[^`])\1(?!`)")
HTML_COMMENT = re.compile(r"<!--[\s\S]*?-->")
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>\n]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*(<[^>\n]*>|\S+)", re.MULTILINE)
HTML_ATTRIBUTE = re.compile(r"<[a-zA-Z][^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']*)[\"']")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def blank_code(text):
    """The text with fenced blocks, code spans and HTML comments turned into spaces (newlines
    kept, so offsets still give line numbers)."""
    lines = text.split("\n")
    fence = None
    for i, line in enumerate(lines):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            lines[i] = ""
        elif fence is not None:
            closing = match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence)
            if closing and line.strip() == match.group(1):
                fence = None
            lines[i] = ""
    text = "\n".join(lines)
    spaces = lambda m: re.sub(r"[^\n]", " ", m.group(0))
    return CODE_SPAN.sub(spaces, HTML_COMMENT.sub(spaces, text))


def heading_texts(text):
    """The text of every heading outside code blocks, in order."""
    headings = []
    fence = None
    previous = ""
    for line in text.split("\n"):
        match = FENCE.match(line)
        if fence is None and match:
            fence, previous = match.group(1), ""
            continue
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                    and line.strip() == match.group(1):
                fence = None
            continue
        atx = ATX_HEADING.match(line)
        if atx:
            headings.append(atx.group(1) or "")
            previous = ""
            continue
        if SETEXT_UNDERLINE.match(line) and previous.strip() and not previous.lstrip().startswith(
                ("|", "-", "*", "+", ">")):
            headings.append(previous.strip())
            previous = ""
            continue
        previous = line
    return headings


def slug(heading):
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    text = text.replace("`", "")
    kept = []
    for ch in text.lower():
        category = unicodedata.category(ch)
        if ch in " -" or category[0] in "LMN" or category == "Pc":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def anchors(path, cache={}):
    if path not in cache:
        seen = {}
        result = set()
        for heading in heading_texts(path.read_text(encoding="utf-8")):
            base = slug(heading)
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
        cache[path] = result
    return cache[path]


def links(text):
    """(line number, target) of every link outside code."""
    clean = blank_code(text)
    found = []
    for pattern in (INLINE_LINK, REFERENCE_DEFINITION, HTML_ATTRIBUTE):
        for match in pattern.finditer(clean):
            target = match.group(1)
            if target.startswith("<") and target.endswith(">"):
                target = target[1:-1]
            found.append((clean.count("\n", 0, match.start(1)) + 1, target.strip()))
    return sorted(found)


def check_links(root, page, problems):
    name = page.relative_to(root).as_posix()
    for line, target in links(page.read_text(encoding="utf-8")):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part)
        if path_part:
            base = root if path_part.startswith("/") else page.parent
            resolved = (base / path_part.lstrip("/")).resolve()
            try:
                resolved.relative_to(root)
            except ValueError:
                problems.append(f"{name}:{line}: link '{target}' points outside the repository")
                continue
            if not resolved.exists():
                problems.append(f"{name}:{line}: link '{target}': no file "
                                f"{resolved.relative_to(root).as_posix()}")
                continue
        else:
            resolved = page
        if anchor and resolved.is_file() and resolved.suffix.lower() == ".md":
            if unquote(anchor) not in anchors(resolved):
                problems.append(f"{name}:{line}: link '{target}': no heading with anchor "
                                f"#{anchor} in {resolved.relative_to(root).as_posix()}")


def check_readme(root, problems):
    readme = root / "README.md"
    if not readme.is_file():
        problems.append("README.md:1: missing")
        return
    lines = readme.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > README_MAX_LINES:
        problems.append(f"README.md:{README_MAX_LINES + 1}: {len(lines)} lines, more than "
                        f"{README_MAX_LINES}: move detail into docs/")
    i = 0
    if i < len(lines) and lines[i].startswith("# "):
        i += 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    block = lines[i:i + len(SETUP_COMMANDS) + 2]
    opens = bool(block) and FENCE.match(block[0]) is not None
    commands = [line.split()[0] if line.split() else "" for line in block[1:-1]]
    closes = len(block) == len(SETUP_COMMANDS) + 2 and FENCE.match(block[-1]) is not None
    if not (opens and tuple(commands) == SETUP_COMMANDS and closes):
        problems.append(f"README.md:{i + 1}: must begin with a code block of the two set-up "
                        f"commands, {' then '.join(SETUP_COMMANDS)}")


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent).resolve()
    pages = [root / "README.md"] + sorted((root / "docs").glob("*.md"))
    problems = []
    check_readme(root, problems)
    checked = 0
    for page in pages:
        if page.is_file():
            check_links(root, page, problems)
            checked += len(links(page.read_text(encoding="utf-8")))
    for problem in problems:
        print(problem)
    if problems:
        print(f"docs_links: {len(problems)} problem(s)")
        return 1
    print(f"docs_links: {checked} links in {len(pages)} pages, all resolve; README.md "
          f"{sum(1 for _ in open(root / 'README.md', encoding='utf-8'))} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
