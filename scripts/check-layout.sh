#!/usr/bin/env bash
# The workspace's crate edges are its architecture (README "Layout"): check them with cargo
# metadata. Each crate may depend (normal and build dependencies) only on the crates the
# table allows; above all, idmux-devcluster and idmux-client never depend on each other.
# Dev-dependencies are for tests and are not edges (idmux-transport's unit tests borrow the
# dev cluster's CA).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys
allowed = {
    "idmux-wire": set(),
    "idmux-identity": {"idmux-wire"},
    "idmux-transport": {"idmux-wire", "idmux-identity"},
    "idmux-client": {"idmux-wire", "idmux-identity", "idmux-transport"},
    "idmux-devcluster": {"idmux-wire", "idmux-identity", "idmux-transport"},
    "idmux-fdpass": {"idmux-wire"},
    "idmux-testkit": {"idmux-wire", "idmux-identity", "idmux-transport", "idmux-client", "idmux-devcluster"},
    "idmux": {"idmux-wire", "idmux-identity", "idmux-transport", "idmux-client", "idmux-devcluster"},
}
meta = json.load(sys.stdin)
bad = []
seen = set()
edges = {}
for p in meta["packages"]:
    edges[p["name"]] = sorted({d["name"] for d in p["dependencies"] if d["name"].startswith("idmux") and d.get("kind") != "dev"})
for p in meta["packages"]:
    name = p["name"]
    seen.add(name)
    if name not in allowed:
        bad.append(f"{name}: a crate the layout table does not list")
        continue
    for d in p["dependencies"]:
        if not d["name"].startswith("idmux") or d.get("kind") == "dev":
            continue
        dep = d["name"]
        if dep not in allowed[name]:
            bad.append(f"{name} depends on {dep}: not allowed by the layout table")
for name in allowed:
    if name not in seen:
        bad.append(f"{name}: missing from the workspace")
for b in bad:
    print("check-layout: " + b, file=sys.stderr)
if bad:
    sys.exit(1)
for name in allowed:
    deps = " ".join(edges.get(name, [])) or "(none of ours)"
    print(f"  {name:17} -> {deps}")
print(f"check-layout: {len(seen)} crates, every edge allowed")
'
