#!/usr/bin/env python3
"""Check that no top-level module of src/ imports a module that imports it back.

Reads every `crate::X` path (in `use` lines, grouped `use crate::{a, b}` and
inline paths) outside comments and `#[cfg(test)]` items, attributes it to the
top-level module of the file it is in (src/foo.rs and src/foo/** are `foo`),
and prints each strongly connected component of more than one module with
the edges inside it. Exits 1 when there is one, 0 otherwise.

    python3 scripts/module-cycles.py            # cycles only
    python3 scripts/module-cycles.py --graph    # every edge too

Test code is left out on purpose: a unit test may load rules or open a store
to exercise its module, which is not a dependency of the module itself.
"""

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CFG_TEST = re.compile(r"^\s*#\[cfg\(test\)\]")
TEST_MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;")


def strip_comments(text):
    """Drop // and /* */ comments, keeping string contents intact enough."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif text[i] == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def drop_test_items(text, path, skipped_files):
    """Remove each `#[cfg(test)]` item; note `#[cfg(test)] mod x;` files."""
    lines = text.split("\n")
    keep, i = [], 0
    while i < len(lines):
        if not CFG_TEST.match(lines[i]):
            keep.append(lines[i])
            i += 1
            continue
        i += 1
        decl = TEST_MOD_DECL.match(lines[i]) if i < len(lines) else None
        if decl:
            base = path.parent if path.name in ("mod.rs", "lib.rs") else path.with_suffix("")
            skipped_files.add(base / f"{decl.group(1)}.rs")
            skipped_files.add(base / decl.group(1) / "mod.rs")
            i += 1
            continue
        depth, opened = 0, False
        while i < len(lines):
            line = lines[i]
            depth += line.count("{") - line.count("}")
            opened = opened or "{" in line
            i += 1
            if (opened and depth <= 0) or (not opened and line.rstrip().endswith(";")):
                break
    return "\n".join(keep)


def group_heads(text, start):
    """Top-level identifiers of the `{...}` group opening at text[start]."""
    heads, depth, i, expect = [], 0, start, True
    while i < len(text):
        c = text[i]
        if c == "{":
            depth += 1
            expect = depth == 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                break
        elif c == "," and depth == 1:
            expect = True
        elif expect and depth == 1:
            m = IDENT.match(text, i)
            if m:
                heads.append(m.group(0))
                i = m.end()
                expect = False
                continue
        i += 1
    return heads


def module_of(path):
    rel = path.relative_to(SRC)
    if len(rel.parts) > 1:
        return rel.parts[0]
    return rel.stem


def main():
    modules = {module_of(p) for p in SRC.rglob("*.rs")} - {"lib", "main"}
    edges = {m: set() for m in modules}
    skipped = set()
    # Parents before children, so a `#[cfg(test)] mod tests;` is seen first.
    # A `mod.rs` declares files beside it, so it goes first at its depth too:
    # directory order alone would sometimes list its `tests.rs` before it.
    def parents_first(p):
        return (len(p.parts), p.name not in ("mod.rs", "lib.rs"), str(p))

    for path in sorted(SRC.rglob("*.rs"), key=parents_first):
        if path in skipped:
            continue
        here = module_of(path)
        if here not in modules:
            continue
        text = drop_test_items(strip_comments(path.read_text()), path, skipped)
        for m in re.finditer(r"\bcrate::", text):
            after = m.end()
            if text.startswith("{", after):
                targets = group_heads(text, after)
            else:
                ident = IDENT.match(text, after)
                targets = [ident.group(0)] if ident else []
            for t in targets:
                if t in modules and t != here:
                    edges[here].add(t)

    if "--graph" in sys.argv:
        for m in sorted(edges):
            print(f"{m} -> {', '.join(sorted(edges[m])) or '(nothing)'}")

    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    cycles = [c for c in sccs if len(c) > 1]
    for c in cycles:
        inside = [f"{a} -> {b}" for a in c for b in sorted(edges[a]) if b in c]
        print(f"cycle: {{{', '.join(c)}}}: {'; '.join(inside)}")
    print(f"{len(modules)} modules, {sum(map(len, edges.values()))} edges, {len(cycles)} cycles")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
