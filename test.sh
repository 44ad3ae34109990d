#!/usr/bin/env bash
# Same set-up as ./run.sh (plus PyTorch for the parity tests, clang for the sanitizer builds, and
# sshd, Slurm and munge for the multi-node tests on a namespaced cluster), then every test.
set -euo pipefail
cd "$(dirname "$0")"
LOOM_EXTRA_PACKAGES="python3-torch python3-numpy clang libomp-dev openssh-server slurmctld slurmd munge" ./run.sh --setup-only
cd build
ctest --output-on-failure --timeout 600 "$@"
