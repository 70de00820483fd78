#!/usr/bin/env bash
# ARCHITECTURE.md stays true: every path it names (a backticked token with a `/`) exists, every
# function it names (`name()` or `Type::name()`) is a `fn` in the sources, and every type it
# names (a backticked CamelCase word, or the `Type` of `Type::...`) is a struct, enum, trait or
# type alias. Exit 1 with each stale name.
set -euo pipefail
cd "$(dirname "$0")/.."

doc=ARCHITECTURE.md
[ -f "$doc" ] || { echo "check-architecture: $doc is missing" >&2; exit 1; }
fail=0
stale() { echo "check-architecture: $doc names $1, which does not exist" >&2; fail=1; }
defined() { git grep -qE "$1" -- '*.rs'; }

while IFS= read -r tok; do
  case "$tok" in
    *' '*|/*|-*) continue ;;   # commands, URLs, flags
  esac
  if [[ "$tok" == */* ]]; then
    [ -e "$tok" ] || stale "path $tok"
    continue
  fi
  if [[ "$tok" =~ ^([A-Z][A-Za-z0-9]*::)*([A-Za-z_][A-Za-z0-9_]*)\(\)$ ]]; then
    defined "fn ${BASH_REMATCH[2]}\b" || stale "function $tok"
  fi
  if [[ "$tok" =~ ^([A-Z][A-Za-z0-9]*)(::|$) ]]; then
    defined "(struct|enum|trait|type) ${BASH_REMATCH[1]}\b" || stale "type ${BASH_REMATCH[1]} (in $tok)"
  fi
done < <(grep -o '`[^`]*`' "$doc" | tr -d '`' | sort -u)
exit "$fail"
