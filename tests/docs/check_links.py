#!/usr/bin/env python3
"""Checks every relative link and image in README.md and docs/*.md: the file must exist and, for a link with
'#anchor', the anchor must be a heading of the target page (GitHub's slugs). Prints each problem; exit code 1 if any.

    python3 tests/docs/check_links.py
"""
import glob
import os
import re
import sys

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def text_outside_code(path):
    lines, fenced = [], False
    for line in open(path, encoding="utf-8"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))   # inline code is not a link
    return lines


def slugs(path):
    found, counts, fenced = set(), {}, False
    for line in open(path, encoding="utf-8"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if fenced or not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(2).strip().lower()).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


pages = [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md")))
problems, checked = [], 0
for page in pages:
    for number, line in enumerate(text_outside_code(page), 1):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue   # http:, https:, mailto:
            checked += 1
            file, _, anchor = target.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
            where = f"{os.path.relpath(page, root)}: ({target})"
            if not os.path.exists(path):
                problems.append(f"{where}: {os.path.relpath(path, root)} does not exist")
            elif anchor and path.endswith(".md") and anchor not in slugs(path):
                problems.append(f"{where}: no heading '#{anchor}' in {os.path.relpath(path, root)}")
print(f"{checked} relative links in {len(pages)} pages; {len(problems)} broken")
for p in problems:
    print("  " + p)
sys.exit(1 if problems else 0)
