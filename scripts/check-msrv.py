#!/usr/bin/env python3
"""Fails if any package in the lock file needs a newer Rust than the workspace declares.

Only one toolchain can be installed on the CI machine, so instead of building with the
declared minimum we check the claim against every dependency's own `rust-version`; cargo
itself then refuses older toolchains with "requires rustc X" instead of a compile error.
"""
import json
import subprocess
import sys


def version(v):
    return tuple(int(x) for x in (v or "0").split("."))


meta = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1"]))
ours = {p["id"] for p in meta["packages"] if p["id"] in meta["workspace_members"]}
declared = max(version(p.get("rust_version")) for p in meta["packages"] if p["id"] in ours)
too_new = [
    f'{p["name"]} {p["version"]} needs Rust {p["rust_version"]}'
    for p in meta["packages"]
    if version(p.get("rust_version")) > declared
]
undeclared = [p["name"] for p in meta["packages"] if p["id"] in ours and not p.get("rust_version")]
if undeclared:
    sys.exit(f"msrv: packages without rust-version: {', '.join(undeclared)}")
if too_new:
    sys.exit(f"msrv: the workspace declares Rust {'.'.join(map(str, declared))}, but " + "; ".join(too_new))
print(f"msrv: Rust {'.'.join(map(str, declared))}; every locked dependency declares at most that")
