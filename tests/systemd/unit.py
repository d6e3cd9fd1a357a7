#!/usr/bin/env python3
"""Reads an installed unit the way systemd would, offline, for tests/systemd/instances.sh.

`systemctl show` needs a running manager and `systemctl cat` refuses --root, so this does the
part of systemd's loading the test needs: the unit file of a name (an instance falls back to
its template), its drop-ins (the template's and the instance's `.d/*.conf`, in file-name order,
the instance's file winning over a template's of the same name), the specifiers %i %I %n %N %p
%%, Environment= (an empty assignment resets it), and ExecStart='s word splitting with ${VAR}
(one word) and $VAR (a word of its own: zero or more words). Anything else it meets that it
cannot expand faithfully (another specifier, more than one ExecStart= command) is
an error rather than a guess.

  unit.py --root DIR get UNIT SECTION KEY    the last value, specifiers expanded
  unit.py --root DIR env UNIT                Environment=, one NAME=VALUE per line
  unit.py --root DIR argv UNIT               ExecStart='s argv, one word per line, $VARs expanded
"""

import argparse
import os
import re
import shlex
import sys

UNIT_DIRS = ("etc/systemd/system", "run/systemd/system", "usr/lib/systemd/system")


class UnitError(Exception):
    pass


def split_name(unit):
    """(prefix, instance or None, suffix) of a unit name such as inferd@1.service."""
    m = re.fullmatch(r"([^@]+)(?:@([^.]*))?(\.[a-z]+)", unit)
    if not m:
        raise UnitError(f"{unit}: not a unit name")
    return m.group(1), m.group(2), m.group(3)


def find_file(root, unit):
    prefix, instance, suffix = split_name(unit)
    names = [unit] if instance is None else [unit, f"{prefix}@{suffix}"]
    for name in names:
        for d in UNIT_DIRS:
            path = os.path.join(root, d, name)
            if os.path.isfile(path):
                return path
    raise UnitError(f"{unit}: no unit file under {root}")


def drop_ins(root, unit):
    prefix, instance, suffix = split_name(unit)
    dirs = [f"{prefix}@{suffix}.d", f"{unit}.d"] if instance is not None else [f"{unit}.d"]
    chosen = {}
    # Later directories win for the same file name: /etc over /run over /usr/lib, and the
    # instance's directory over the template's.
    for d in reversed(UNIT_DIRS):
        for sub in dirs:
            path = os.path.join(root, d, sub)
            if os.path.isdir(path):
                for f in os.listdir(path):
                    if f.endswith(".conf"):
                        chosen[f] = os.path.join(path, f)
    return [chosen[f] for f in sorted(chosen)]


def parse(path):
    """[(section, key, raw value)] in file order."""
    entries = []
    section = None
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if "=" not in line or section is None:
            raise UnitError(f"{path}: cannot parse {line!r}")
        key, value = line.split("=", 1)
        entries.append((section, key.strip(), value.strip()))
    return entries


def specifiers(value, unit):
    prefix, instance, suffix = split_name(unit)
    table = {
        "i": instance or "",
        "I": instance or "",
        "n": unit,
        "N": unit[: -len(suffix)],
        "p": prefix,
        "%": "%",
    }

    def one(m):
        c = m.group(1)
        if c not in table:
            raise UnitError(f"{unit}: specifier %{c} is not supported by this reader")
        return table[c]

    return re.sub(r"%(.)", one, value)


def load(root, unit):
    entries = []
    for path in [find_file(root, unit)] + drop_ins(root, unit):
        entries += parse(path)
    return [(s, k, specifiers(v, unit)) for s, k, v in entries]


def values(entries, section, key):
    return [v for s, k, v in entries if s == section and k == key]


def environment(entries):
    env = {}
    for value in values(entries, "Service", "Environment"):
        if value == "":
            env = {}
            continue
        for assignment in shlex.split(value):
            name, sep, val = assignment.partition("=")
            if not sep:
                raise UnitError(f"Environment={value}: {assignment!r} has no '='")
            env[name] = val
    return env


def argv(entries):
    commands = []
    for value in values(entries, "Service", "ExecStart"):
        if value == "":
            commands = []
        else:
            commands.append(value)
    if len(commands) != 1:
        raise UnitError(f"{len(commands)} ExecStart= commands; this reader expands exactly one")
    command = commands[0].lstrip("-@:+!")
    env = environment(entries)
    words = []
    for word in shlex.split(command):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            words += env.get(whole.group(1), "").split()
            continue
        words.append(
            re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word)
        )
    return words


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True)
    sub = p.add_subparsers(dest="verb", required=True)
    g = sub.add_parser("get")
    g.add_argument("unit")
    g.add_argument("section")
    g.add_argument("key")
    sub.add_parser("env").add_argument("unit")
    sub.add_parser("argv").add_argument("unit")
    a = p.parse_args()
    try:
        entries = load(a.root, a.unit)
        if a.verb == "get":
            found = values(entries, a.section, a.key)
            if not found:
                raise UnitError(f"{a.unit}: no {a.key}= in [{a.section}]")
            print(found[-1])
        elif a.verb == "env":
            for name, val in environment(entries).items():
                print(f"{name}={val}")
        else:
            print("\n".join(argv(entries)))
    except (UnitError, OSError, ValueError) as e:
        print(f"unit.py: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
