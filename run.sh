#!/usr/bin/env bash
# Installs what is missing (Debian packages), builds loom into build/, prepares data sets from
# the Python standard library's sources (bytes, and SentencePiece tokens), and trains
# configs/sentencepiece.textproto on the CPU.
#
#   ./run.sh                       the default run
#   ./run.sh --set train.steps=50  extra arguments go to `loom train`
#   ./run.sh --setup-only          install and build only (used by ./test.sh)
set -euo pipefail
cd "$(dirname "$0")"

packages=(build-essential cmake ninja-build pkg-config libprotobuf-dev protobuf-compiler
          libopenblas-openmp-dev libopenmpi-dev openmpi-bin libgtest-dev zlib1g-dev
          libsentencepiece-dev python3)
[ -n "${LOOM_EXTRA_PACKAGES:-}" ] && read -r -a extra <<<"$LOOM_EXTRA_PACKAGES" && packages+=("${extra[@]}")

install_missing() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  echo "run.sh: installing ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -ne 0 ] && sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

build() {
  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  # LOOM_MARCH=native ./run.sh builds for this CPU alone (docs/setup.md: Build); the default,
  # x86-64-v3, runs on every x86-64 CPU with AVX2 and FMA.
  cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DLOOM_MARCH="${LOOM_MARCH:-x86-64-v3}" >/dev/null
  cmake --build build -j "$(nproc)"
}

install_missing
build
[ "${1:-}" = "--setup-only" ] && exit 0

# Prepared once (again when interrupted): SentencePiece tokens for the run below, and bytes for
# configs/default.textproto and the first commands of the README and docs/.
prepare() {  # prepare DIR [loom prepare options...]
  local dir=$1
  shift
  ls "$dir"/train_*.bin "$dir"/val_*.bin "$dir"/data.textproto >/dev/null 2>&1 && return
  rm -rf "$dir"
  local inputs=()
  for python in /usr/lib/python3.[0-9]*; do [ -d "$python" ] && inputs+=(--input "$python"); done
  [ ${#inputs[@]} -gt 0 ] || { echo "run.sh: no /usr/lib/python3.* to make data from" >&2; exit 1; }
  build/loom prepare "${inputs[@]}" --ext .py --output "$dir" --val-fraction 0.05 "$@"
}
prepare data/pystdlib
prepare data/pystdlib-sp4k --tokenizer sentencepiece --vocab-size 4096
exec build/loom train configs/sentencepiece.textproto "$@"
