"""Writes the seed guide's Python examples into this folder, verbatim, one file per
code block, named after the section it sits in (`NN_section.py`).

    python tests/python/guide/extract.py [GUIDE]          # write the files
    python tests/python/guide/extract.py --check [GUIDE]  # fail if any file differs

GUIDE defaults to ../shared/seed/IPFS.md beside the repository. The files are committed
so the suite runs without the guide; `--check` proves they are still the guide's text.
"""

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_GUIDE = os.path.join(HERE, "..", "..", "..", "..", "shared", "seed", "IPFS.md")


def blocks(text):
    """(section, code) for each ```python block, in order."""
    section = "top"
    out = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        heading = re.match(r"^#{2,4} (.+)$", line)
        if heading:
            section = heading.group(1).strip()
        if line.strip() == "```python":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            out.append((section, "".join(lines[i + 1 : j])))
            i = j
        i += 1
    return out


def files(guide):
    with open(guide, encoding="utf-8") as f:
        text = f.read()
    for n, (section, code) in enumerate(blocks(text), start=1):
        slug = re.sub(r"[^a-z0-9]+", "_", section.lower()).strip("_")
        yield f"{n:02d}_{slug}.py", code


def main():
    args = [a for a in sys.argv[1:] if a != "--check"]
    check = "--check" in sys.argv[1:]
    guide = args[0] if args else DEFAULT_GUIDE
    wrong = []
    for name, code in files(guide):
        path = os.path.join(HERE, name)
        if check:
            try:
                with open(path, encoding="utf-8") as f:
                    same = f.read() == code
            except FileNotFoundError:
                same = False
            if not same:
                wrong.append(name)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(code)
            print(path)
    if wrong:
        sys.exit(f"not verbatim copies of {guide}: {', '.join(wrong)}")


if __name__ == "__main__":
    main()
