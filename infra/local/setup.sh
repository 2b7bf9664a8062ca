#!/usr/bin/env bash
# Create .venv and install vsae on a fresh machine (Python 3.11+).
#   bash infra/local/setup.sh          the package and its runtime dependencies
#   bash infra/local/setup.sh --test   also the test tools (pytest, hypothesis, moto, Debian's chromium)
# torch is pinned to the CPU build first; on a GPU machine install your CUDA build of torch into
# .venv before running this script (any torch >= 2.4 is kept as it is).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".${extras}"
if [[ -n "$extras" ]]; then
    # Lucent's PyTorch port of InceptionV1, the tests' independent reference; without its
    # dependencies, which would pull in torchvision (a CUDA build that breaks beside CPU torch).
    .venv/bin/python -m pip install --quiet --no-deps "torch-lucent==0.1.8"
    # Debian's chromium for the dashboard's browser test (Playwright drives it; no browser is
    # downloaded at run time), installed when missing and permitted; the test skips without it.
    if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
        sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo -n"
        $sudo apt-get install -y -q chromium >/dev/null 2>&1 \
            || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q chromium >/dev/null 2>&1; } \
            || echo "chromium not installed (no apt-get permission): the browser test will be skipped"
    fi
fi
# WordNet 3.0 for the analysis job's class tree (ImageNet classes are WordNet noun synsets): an
# nltk copy if there is one, else the system's (Debian/Ubuntu: wordnet-base + wordnet-sense-index,
# installed here when missing and permitted), else nltk.download; it lands in .venv/nltk_data.
if ! .venv/bin/python -m vsae.analysis.wordnet install --download >/dev/null 2>&1; then
    sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo -n"
    if command -v apt-get >/dev/null; then
        $sudo apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null 2>&1 \
            || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null 2>&1; } || true
    fi
    .venv/bin/python -m vsae.analysis.wordnet install   # prints how to get WordNet if it is still missing
fi
echo "vsae installed in .venv ($(.venv/bin/python -c 'import torch, zarr, ray; print(f"torch {torch.__version__}, zarr {zarr.__version__}, ray {ray.__version__}")'))"
