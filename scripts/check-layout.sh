#!/usr/bin/env bash
# Checks two rules of the repository's layout that no compiler or linter sees:
#   - no tracked source file is longer than 600 lines (split it by concern instead);
#   - every link in a tracked Markdown file resolves inside the repository, to a tracked file or
#     folder, and web links name only the local deployment (127.0.0.1 or localhost).
# Prints each breach and exits non-zero when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - <<'EOF'
import os
import re
import subprocess
import sys

MAX_LINES = 600
SOURCE = re.compile(r"\.(rs|sh|py|sql|js|ts)$")
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<(https?://[^>]+)>")
LOCAL_WEB = re.compile(r"https?://(127\.0\.0\.1|localhost)([:/]|$)")

tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.split()
paths = set(tracked)
folders = {os.path.dirname(path) for path in tracked}
while "" not in folders and folders:
    folders |= {os.path.dirname(folder) for folder in folders}
breaches = []

for path in tracked:
    if SOURCE.search(path) and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as file:
            count = sum(1 for _ in file)
        if count > MAX_LINES:
            breaches.append(f"{path}: {count} lines (at most {MAX_LINES})")

for path in (p for p in tracked if p.endswith(".md")):
    with open(path, encoding="utf-8") as file:
        in_code = False
        for number, line in enumerate(file, 1):
            if line.lstrip().startswith("```"):
                in_code = not in_code
            if in_code:
                continue
            for match in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
                target = match.group(1) or match.group(2)
                if re.match(r"[a-z]+:", target):
                    if not LOCAL_WEB.match(target):
                        breaches.append(f"{path}:{number}: {target} points outside the repository")
                    continue
                file_part = target.split("#", 1)[0]
                if not file_part:
                    continue
                resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part))
                if resolved.startswith("..") or os.path.isabs(file_part):
                    breaches.append(f"{path}:{number}: {target} points outside the repository")
                elif resolved not in paths and resolved not in folders:
                    breaches.append(f"{path}:{number}: {target} names no tracked file or folder")

for breach in breaches:
    print(breach)
print(f"layout: {len(breaches)} breach(es)")
sys.exit(1 if breaches else 0)
EOF
