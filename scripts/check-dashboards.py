#!/usr/bin/env python3
"""Checks the chart's Grafana dashboards (scripts/check-chart.sh runs it).

Usage: check-dashboards.py RENDERED.yaml METRICS.txt REGISTERED.txt RULES_OUT

RENDERED.yaml: `helm template` output; its ConfigMaps labelled grafana_dashboard hold the JSON.
METRICS.txt: a /metrics scrape of meshd; REGISTERED.txt: family names meshd's code registers.
Every panel expression must name only those metrics (a family may appear with the suffixes
Prometheus gives it: _total, _bucket, _sum, _count). RULES_OUT gets every expression as a
recording rule, with Grafana's variables replaced, for `promtool check rules` to parse.
Exits 1 naming each problem. `--self-test` shows the name check can fail.
"""
import json
import re
import sys

import yaml

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "inf", "nan"}
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count")


def metric_names(expr):
    """The metric names an expression selects (a small PromQL scan, enough for dashboards)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    e = re.sub(r"\{[^}]*\}", "", e)                       # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                      # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\$\{?\w+\}?", "", e)                     # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS or re.fullmatch(r"\d+\w*", word):
            continue
        names.add(word)
    return names


def exported(metrics_text, registered):
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.match(r"[\w:]+", line).group(0))
    names |= {r.strip() for r in registered.splitlines() if r.strip()}
    return {n + s for n in names for s in SUFFIXES}


def check(dashboards, known):
    problems, exprs = [], []
    for title, d in dashboards:
        for p in d.get("panels", []):
            for t in p.get("targets", []):
                expr = t.get("expr", "")
                if not expr:
                    problems.append(f"{title}: panel {p.get('title')!r} has a target without expr")
                    continue
                exprs.append(expr)
                for name in sorted(metric_names(expr) - known):
                    problems.append(f"{title}: panel {p.get('title')!r}: {name} is not a metric meshd exports")
        for v in d.get("templating", {}).get("list", []):
            q = v.get("definition") or ""
            for name in re.findall(r"label_values\(\s*([\w:]+)\s*,", q):
                if name not in known:
                    problems.append(f"{title}: variable {v.get('name')}: {name} is not a metric meshd exports")
    return problems, exprs


def main():
    if sys.argv[1:] == ["--self-test"]:
        bad = {"panels": [{"title": "x", "targets": [{"expr": "sum(rate(no_such_metric[5m]))"}]}]}
        problems, _ = check([("self-test", bad)], exported("istio_requests_total 1\n", ""))
        assert problems and "no_such_metric" in problems[0], problems
        assert metric_names('sum by (le) (rate(a_bucket{x="y(z)"}[5m])) / on(pod) b') == {"a_bucket", "b"}
        print("check-dashboards: self-test OK")
        return 0
    rendered, metrics, registered, rules_out = sys.argv[1:5]
    dashboards = []
    for doc in yaml.safe_load_all(open(rendered)):
        if not doc or doc.get("kind") != "ConfigMap":
            continue
        if doc["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
            continue
        for key, text in doc.get("data", {}).items():
            try:
                dashboards.append((f"{doc['metadata']['name']}/{key}", json.loads(text)))
            except json.JSONDecodeError as e:
                print(f"check-dashboards: {doc['metadata']['name']}/{key}: not JSON: {e}")
                return 1
    if len(dashboards) < 2:
        print(f"check-dashboards: {len(dashboards)} dashboard ConfigMaps rendered, want the control plane's and the mesh's")
        return 1
    known = exported(open(metrics).read(), open(registered).read())
    problems, exprs = check(dashboards, known)
    for p in problems:
        print("check-dashboards:", p)
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:expr{i}",
         "expr": e.replace("$__rate_interval", "5m").replace("$namespace", ".*")}
        for i, e in enumerate(exprs)]}]}
    with open(rules_out, "w") as f:
        yaml.safe_dump(rules, f)
    print(f"check-dashboards: {len(dashboards)} dashboards, {len(exprs)} expressions, "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
