#!/usr/bin/env python3
"""Imports run one way. Two checks, exit 1 on any violation:

1. Crate layers: each workspace crate's meshd-* dependencies (Cargo.toml [dependencies]) are
   within what ARCHITECTURE.md's table says it may import; and the pure crates (model, ca,
   injector-webhook, xds) name neither tokio nor tonic in their dependencies or sources.
2. No import circles between sibling modules of a crate: for every pair of modules under one
   parent, `a` using `b` (via `crate::`, `super::` or `self::` paths, test code excluded) and `b`
   using `a`, directly or through other siblings, is reported with the cycle.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = {  # folder -> (package, ARCHITECTURE.md's short names it may import)
    "model": "meshd-model", "ca": "meshd-ca", "injector-webhook": "meshd-injector",
    "xds": "meshd-xds", "ads": "meshd-ads", "control-plane": "meshd",
    "localmesh": "meshd-localmesh", "tests": "meshd-e2e", "tools/loadgen": "meshd-loadgen",
    "proxy-wait": "meshd-proxy-wait",
}
SHORT = {"meshd-model": "model", "meshd-ca": "ca", "meshd-injector": "injector",
         "meshd-xds": "xds", "meshd-ads": "ads", "meshd": "control-plane",
         "meshd-localmesh": "localmesh", "meshd-proxy-wait": "proxy-wait"}
PURE = ["model", "ca", "injector-webhook", "xds", "proxy-wait"]
failures = []


def allowed_imports():
    """folder -> set of short names, from the 'may import' column of ARCHITECTURE.md."""
    out = {}
    for line in open(os.path.join(ROOT, "ARCHITECTURE.md")):
        m = re.match(r"\| `([^`]+)/` \| ([\w-]+) \|.*\| ([^|]*) \|\s*$", line)
        if m:
            col = m.group(3).split(".")[0]
            out[m.group(1)] = "everything" if "everything" in col else set(
                w for w in re.findall(r"[a-z-]+", col) if w in SHORT.values())
    return out


def dependencies(folder):
    text = open(os.path.join(ROOT, folder, "Cargo.toml")).read()
    section, deps = None, set()
    for line in text.splitlines():
        h = re.match(r"\[(.+)\]", line.strip())
        if h:
            section = h.group(1)
            continue
        if section in ("dependencies", "build-dependencies"):
            m = re.match(r"([\w-]+)\s*(\.|=)", line.strip())
            if m:
                deps.add(m.group(1))
    return deps


def check_layers():
    allowed = allowed_imports()
    for folder, package in CRATES.items():
        if folder not in allowed:
            failures.append(f"ARCHITECTURE.md has no row for `{folder}/` ({package})")
            continue
        may = allowed[folder]
        deps = dependencies(folder)
        if may != "everything":
            for dep in sorted(d for d in deps if d in SHORT and d != package):
                if SHORT[dep] not in may:
                    failures.append(f"{folder}/Cargo.toml depends on {dep}; ARCHITECTURE.md allows {sorted(may)}")
        if folder in PURE:
            for banned in ("tokio", "tonic", "tokio-stream", "tonic-prost"):
                if banned in deps:
                    failures.append(f"{folder}/Cargo.toml depends on {banned}: a pure crate has no async runtime or gRPC")
            for path, _ in rust_files(folder):
                for n, line in enumerate(strip_tests(open(path).read()).splitlines(), 1):
                    if re.search(r"\b(tokio|tonic)::", line):
                        failures.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()} (pure crate)")


def rust_files(folder):
    """(path, module path) of each non-test source file of a crate's library and binaries."""
    src = os.path.join(ROOT, folder, "src")
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs") or f == "tests.rs" or f.endswith("_tests.rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[0] == "bin" or rel == ["main"]:
                continue  # a binary is its own crate root; its modules are checked below anyway
            if rel[-1] in ("lib", "mod"):
                rel = rel[:-1]
            yield path, tuple(rel)


def strip_tests(text):
    """Source with `#[cfg(test)]` items removed (a line, or a block to its closing brace)."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip().startswith("#[cfg(test)]"):
            depth, i, opened = 0, i + 1, False
            while i < len(lines):
                depth += lines[i].count("{") - lines[i].count("}")
                opened = opened or "{" in lines[i]
                end = (opened and depth <= 0) or (not opened and lines[i].rstrip().endswith(";"))
                i += 1
                if end:
                    break
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def paths_in(text):
    """Every module path a source names: `crate::a::b`, `super::x`, `self::y`, and the
    members of `use crate::{a, b::c}` groups (one level of braces)."""
    text = re.sub(r"//.*", "", text)
    for m in re.finditer(r"\b(crate|super|self)((?:::\w+)*)::\{([^{}]*)\}", text):
        base = [m.group(1)] + [p for p in m.group(2).split("::") if p]
        for item in m.group(3).split(","):
            item = item.strip()
            if item:
                yield base + [p for p in item.split(" as ")[0].split("::") if p and p != "self"]
    for m in re.finditer(r"\b(crate|super|self)((?:::\w+)+)", text):
        yield [m.group(1)] + [p for p in m.group(2).split("::") if p]


def check_cycles(folder):
    files = dict((mod, path) for path, mod in rust_files(folder))
    modules = set(files)
    edges = {}  # parent -> {child: set(child)}
    for mod, path in files.items():
        text = strip_tests(open(path).read())
        for p in paths_in(text):
            head, rest = p[0], p[1:]
            if head == "crate":
                target = []
            elif head == "self":
                target = list(mod)
            else:
                target = list(mod[:-1])
                while rest and rest[0] == "super":
                    target, rest = target[:-1], rest[1:]
            for part in rest:
                if tuple(target + [part]) in modules:
                    target.append(part)
                else:
                    break
            target = tuple(target)
            k = 0
            while k < min(len(mod), len(target)) and mod[k] == target[k]:
                k += 1
            if k < len(mod) and k < len(target):
                edges.setdefault(mod[:k], {}).setdefault(mod[k], set()).add(target[k])
    for parent, graph in edges.items():
        for cycle in cycles(graph):
            where = "::".join(parent) or "crate root"
            failures.append(f"{folder}: import circle under {where}: {' -> '.join(cycle)}")


def shortest_cycle(graph, comp):
    """The shortest cycle through the first module of a strongly connected component."""
    start = min(comp)
    prev, queue = {start: None}, [start]
    for v in queue:
        for w in sorted(graph.get(v, ())):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return [start] + path[::-1][1:] + [start] if len(path) > 1 or v != start else [start, start]
            if w in comp and w not in prev:
                prev[w] = v
                queue.append(w)
    return sorted(comp)


def cycles(graph):
    """One representative cycle per strongly connected component with more than one module."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
            if len(comp) > 1:
                found.append(shortest_cycle(graph, set(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def self_test():
    """The check finds a circle it is shown: two sibling modules using each other (one through
    a `use crate::{..}` group, one through `super::`), and none once the back edge is test code."""
    import tempfile
    global ROOT
    saved, ROOT = ROOT, tempfile.mkdtemp()
    try:
        src = os.path.join(ROOT, "demo", "src")
        os.makedirs(os.path.join(src, "outer"))
        files = {
            "lib.rs": "mod outer;\n",
            "outer/mod.rs": "mod a;\nmod b;\n",
            "outer/a.rs": "use crate::outer::{b::Thing, self};\n",
            "outer/b.rs": "pub struct Thing;\nfn f() { super::a::g() }\n",
        }
        for name, text in files.items():
            open(os.path.join(src, name), "w").write(text)
        check_cycles("demo")
        found = [f for f in failures if "a -> b -> a" in f]
        open(os.path.join(src, "outer/b.rs"), "w").write(
            "pub struct Thing;\n#[cfg(test)]\nmod tests {\n    fn f() { super::super::a::g() }\n}\n")
        del failures[:]
        check_cycles("demo")
        ok = len(found) == 1 and not failures
        print("check-layers self-test:", "ok" if ok else f"FAILED (found {found}, then {failures})")
        return ok
    finally:
        ROOT = saved


if sys.argv[1:] == ["--self-test"]:
    sys.exit(0 if self_test() else 1)
check_layers()
for folder in CRATES:
    check_cycles(folder)
for f in failures:
    print(f"check-layers: {f}", file=sys.stderr)
sys.exit(1 if failures else 0)
