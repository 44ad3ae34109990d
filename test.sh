#!/usr/bin/env bash
# Same set-up as ./run.sh (plus PyTorch for the parity tests), then every test through ctest.
set -euo pipefail
cd "$(dirname "$0")"
LOOM_EXTRA_PACKAGES="python3-torch python3-numpy clang libomp-dev" ./run.sh --setup-only
cd build
ctest --output-on-failure --timeout 600 "$@"
