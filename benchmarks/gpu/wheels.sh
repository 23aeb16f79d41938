#!/usr/bin/env bash
# Issue 16, on a CPU machine with PyPI: download the wheels benchmarks/gpu/check.sh installs on the device machine
# (Python 3.12, manylinux x86_64, no network there) into benchmarks/gpu/wheels/ (git-ignored; it travels with the
# working tree when the run carries it: carry ["benchmarks/gpu/wheels"]).
#
#   bash benchmarks/gpu/wheels.sh                  # the packages the device image lacks, with their dependencies
#   PACKAGES="ale-py zarr" bash benchmarks/gpu/wheels.sh
#
# Only what the device image (docs/benchmarks.md, "GPU check") does not already hold is fetched: ale-py, gymnasium,
# zarr (+ numcodecs, donfig, msgspec, ...), zstandard, google-crc32c and numpy (so that zarr's and ale-py's numpy
# pins resolve offline); about 28 MB. Left out on purpose: torch (preinstalled, ~1 GB with its CUDA libraries),
# opencv-python-headless (~50 MB), matplotlib, tensorboard, typer, rich, psutil, fsspec, safetensors, pyyaml, pytest:
# the image has them; check.sh imports every project dependency after installing and says which one is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PY:-python3}
DEST=${DEST:-$ROOT/benchmarks/gpu/wheels}
PACKAGES=${PACKAGES:-ale-py>=0.10 gymnasium>=1.0 zarr>=3.0.8 zstandard>=0.22 google-crc32c>=1.5}
PY_VERSION=${PY_VERSION:-3.12}
LIMIT_MB=${LIMIT_MB:-64}                 # what a run can carry, the working tree included

mkdir -p "$DEST"
# shellcheck disable=SC2086 # PACKAGES is a list of words on purpose
"$PY" -m pip download --quiet --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 --dest "$DEST" $PACKAGES
if ls "$DEST" | grep -qiE '^(torch|nvidia_|triton)-'; then
    echo "error: torch or CUDA wheels in $DEST (the device has them preinstalled): remove them" >&2
    exit 1
fi
size_kb=$(du -sk "$DEST" | cut -f1)
echo "$(ls "$DEST" | grep -c '\.whl$') wheels, $((size_kb / 1024)) MiB in $DEST"
if [ $((size_kb / 1024)) -ge "$LIMIT_MB" ]; then
    echo "warning: over the ${LIMIT_MB} MiB a run can carry; drop packages from PACKAGES" >&2
fi
