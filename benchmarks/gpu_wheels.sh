#!/usr/bin/env bash
# The pinned packages benchmarks/gpu_check.sh needs on the lent GPU machine (Python 3.12, its own
# CUDA torch and numpy, no network), as wheels in .whl/ (ignored by git; carried with the check).
# Only pure-Python packages the machine lacks or has at another version: never torch, numpy or
# anything compiled against them. antlr4 4.9.3 exists only as a source archive: built here into a
# pure-Python wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
rm -rf .whl && mkdir -p .whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
  transformers==5.24.0 trl==1.16.0 peft==0.21.2 datasets==5.2.0 hydra-core==1.3.8 omegaconf==2.3.1 \
  dill==0.4.1 multiprocess==0.70.19
$PY -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -1 .whl
