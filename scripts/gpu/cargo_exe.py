#!/usr/bin/env python3
"""Prints the executable cargo built for a target, from `cargo ... --message-format=json` on
stdin: ``cargo_exe.py NAME KIND`` (KIND is test, bench or bin)."""

import json
import sys

name, kind = sys.argv[1], sys.argv[2]
found = None
for line in sys.stdin:
    try:
        message = json.loads(line)
    except ValueError:
        continue
    target = message.get("target", {})
    if (
        message.get("reason") == "compiler-artifact"
        and target.get("name") == name
        and kind in target.get("kind", [])
        and message.get("executable")
    ):
        found = message["executable"]
if not found:
    sys.exit(f"cargo built no {kind} target named {name}")
print(found)
