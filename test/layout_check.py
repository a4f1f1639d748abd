#!/usr/bin/python3
"""layout_check.py REPO -- the source tree keeps the shape README's Layout describes.

Checks, one line each ("ok - ..." / "not ok - ..."), then "N passed, N failed":
  - no file of src/ is over 1,000 lines;
  - every file of src/ opens with the project's header block naming its own
    path below src/ and saying what it owns;
  - no include circle: a module is a .c and its .h (src/cache/slots.c and
    src/cache/slots.h are one), an edge runs from a module to every module
    whose header it includes; the graph must be acyclic;
  - every project include is folder-qualified and names a file that exists.
Exit status 1 on any failure.
"""
import os
import re
import sys

repo = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
src = os.path.join(repo, "src")
passed = failed = 0


def check(ok, name, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print("ok - " + name)
    else:
        failed += 1
        print("not ok - " + name + (": " + detail if detail else ""))


files = []
for d, _, names in os.walk(src):
    for n in names:
        if n.endswith((".c", ".h")):
            files.append(os.path.relpath(os.path.join(d, n), src))
files.sort()

long_files = []
bad_headers = []
includes = {}
for f in files:
    text = open(os.path.join(src, f), encoding="utf-8").read()
    n = text.count("\n")
    if n > 1000:
        long_files.append("%s (%d lines)" % (f, n))
    head = text[:600]
    m = re.match(r"/\*-+\n \*\n \* (\S+)\n \*\t\t\S", head)
    if not m or m.group(1) != f:
        bad_headers.append(f)
    includes[f] = re.findall(r'^#include "([^"]+)"', text, re.M)

check(not long_files, "no file of src/ is over 1,000 lines (%d files)" % len(files), ", ".join(long_files))
check(not bad_headers, "every file of src/ opens with a header block naming its path and what it owns",
      ", ".join(bad_headers))

basenames = {os.path.basename(g) for g in files}
unqualified = []
for f, incs in includes.items():
    for i in incs:
        # a project header named other than by its path below src/
        if "/" not in i and not os.path.exists(os.path.join(src, i)) and i in basenames:
            unqualified.append("%s: %s" % (f, i))
check(not unqualified, "every project include is folder-qualified from src/", ", ".join(unqualified))


def module(path):
    return os.path.splitext(path)[0]


graph = {}
for f, incs in includes.items():
    m = module(f)
    graph.setdefault(m, set())
    for i in incs:
        if i in includes and module(i) != m:
            graph[m].add(module(i))

# a cycle, if any (depth-first search, colours)
WHITE, GREY, BLACK = 0, 1, 2
colour = {m: WHITE for m in graph}
cycle = []


def visit(m, stack):
    colour[m] = GREY
    stack.append(m)
    for n in sorted(graph.get(m, ())):
        if colour.get(n, WHITE) == GREY:
            cycle.extend(stack[stack.index(n):] + [n])
            return True
        if colour.get(n, WHITE) == WHITE and visit(n, stack):
            return True
    stack.pop()
    colour[m] = BLACK
    return False


for m in sorted(graph):
    if colour[m] == WHITE and visit(m, []):
        break
check(not cycle, "no include circle between modules (%d modules)" % len(graph), " -> ".join(cycle))

print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
