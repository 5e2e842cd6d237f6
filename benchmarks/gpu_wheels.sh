#!/usr/bin/env bash
# The pinned packages benchmarks/gpu_check.sh needs on the lent GPU machine (Python 3.12, its own
# CUDA torch and numpy, no network), as wheels in .whl/ (ignored by git; carried with the check).
# The list is benchmarks/gpu_wheels.txt; antlr4 (a source archive only) is built here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
rm -rf .whl && mkdir -p .whl
mapfile -t wanted < <(grep -v '^#' benchmarks/gpu_wheels.txt | grep -v '^antlr4' | grep .)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "${wanted[@]}"
$PY -m pip wheel -q --no-deps -w .whl "$(grep '^antlr4' benchmarks/gpu_wheels.txt)"
ls -1 .whl
