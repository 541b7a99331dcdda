#!/usr/bin/env python3
"""Finds import cycles between the modules of each crate of the workspace (part of `make lint`).

A module is a file under `src/`. Module A depends on module B when A names a path into B
(`use crate::b::…`, `use super::b`, `crate::b::f(…)`), B is not A's own descendant (a parent
that declares and re-exports a child is not a dependency on it), and A is not B's descendant
(a child may use what its parent declares). Test code (`#[cfg(test)]` modules and `tests.rs`)
is left out: tests may reach anywhere. Cycles are reported at two levels: between files, and
between the top-level modules of a crate (`crate::planners` vs `crate::reconcile`). Exits 1
when any is found.
"""
import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)::\{([^;]*)\};", re.S)


def module_of(src: Path, file: Path) -> tuple:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_tests(text: str) -> str:
    """Drops `#[cfg(test)] mod … { … }` blocks and comments."""
    text = re.sub(r"//[^\n]*", "", text)
    out, i = [], 0
    marker = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = marker.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    return "".join(out)


def referenced(module: tuple, text: str) -> set:
    """Module paths (as tuples) that `text` of `module` names."""
    found = set()
    for m in USE_GROUP.finditer(text):
        root, body = m.group(1), m.group(2)
        for item in re.split(r",", re.sub(r"\{[^}]*\}", "", body)):
            item = item.strip().split(" as ")[0]
            if item:
                found.add(resolve(module, root, item.split("::")))
    for m in PATH.finditer(text):
        if m.group(2) == "::{":
            continue
        found.add(resolve(module, m.group(1), m.group(2).strip(":").split("::")))
    return {f for f in found if f is not None}


def resolve(module: tuple, root: str, rest: list):
    if root == "crate":
        base = ()
    elif root == "self":
        base = module
    else:
        base = module[:-1]
    while rest and rest[0] == "super":
        base, rest = base[:-1], rest[1:]
    return base + tuple(p for p in rest if p and p != "self")


def cycles(nodes, edges):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def check(src: Path) -> list:
    files = [f for f in src.rglob("*.rs") if f.name != "tests.rs" and "bin" not in f.relative_to(src).parts]
    modules = {module_of(src, f): f for f in files}
    edges, top_edges = {}, {}
    for module, file in modules.items():
        for target in referenced(module, strip_tests(file.read_text())):
            # the longest prefix of the path that is a module file
            while target and target not in modules:
                target = target[:-1]
            if not target or target == module:
                continue
            if target[: len(module)] == module or module[: len(target)] == target:
                continue
            edges.setdefault(module, set()).add(target)
            if module and target and module[0] != target[0]:
                top_edges.setdefault(module[:1], set()).add(target[:1])
    found = []
    name = lambda m: "::".join(("crate",) + m)
    for component in cycles(modules, edges):
        found.append("files: " + " <-> ".join(name(m) for m in component))
    tops = {m[:1] for m in modules if m}
    for component in cycles(tops, top_edges):
        found.append("top-level modules: " + " <-> ".join(name(m) for m in component))
    return found


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    crates = [root / "src"] + sorted(p / "src" for p in (root / "crates").iterdir() if (p / "src").is_dir())
    failed = False
    for src in crates:
        found = check(src)
        label = src.parent.relative_to(root) if src.parent != root else Path(".")
        if found:
            failed = True
            for line in found:
                print(f"{label}: import cycle between {line}")
        else:
            print(f"{label}: no import cycles ({sum(1 for _ in src.rglob('*.rs'))} files)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
