#!/usr/bin/env bash
# GPU benchmark (README, "GPU"): training and prediction sentences/s and test metrics on SNIPS, fp32 and bf16,
# and the GPU's name. About 2-3 minutes on one recent GPU (8 epochs per precision).
#
#   benchmarks/gpu.sh                 # options after it go to benchmarks/gpu.py (--epochs, --device, --data)
#   PYTHON=/path/to/python benchmarks/gpu.sh
#
# Needs a python with torch (a CUDA build) and spaCy. If it cannot import the project, the project is installed
# into it (`pip install -e .`). The data: data/raw/snips, else ../shared/datasets/snips or shared/datasets/snips
# copied there, else `dvc pull` (DATA=<folder> benchmarks another dataset folder and skips all this).
# Results: $OUT/gpu.json when OUT is set, else benchmarks/results/gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import pandas, pyarrow, pydantic, ruamel.yaml, spacy, torch, twinhead.train" 2>/dev/null; then
  echo "installing the project into $("$PY" -c 'import sys; print(sys.executable)')" >&2
  "$PY" -m pip install -q -e .
fi

DATA=${DATA:-}
if [ -z "$DATA" ]; then
  DATA=data/raw/snips
  if [ ! -f "$DATA/train/seq.in" ]; then
    mkdir -p data/raw
    for src in ../shared/datasets/snips shared/datasets/snips; do
      if [ -f "$src/train/seq.in" ]; then cp -r "$src" "$DATA"; break; fi
    done
  fi
  if [ ! -f "$DATA/train/seq.in" ]; then
    dvc pull data/raw/snips.dvc
  fi
fi

"$PY" -c "import torch; print('CUDA available:', torch.cuda.is_available())"
exec "$PY" benchmarks/gpu.py --data "$DATA" "$@"
