#!/usr/bin/env bash
# Before a GPU campaign, on a machine with network: gather into ./.whl every wheel the
# lent GPU machine lacks (it has no network), so one `carry: [".whl"]` brings them all.
#
#   ../shared/device/prepare.sh's PyCUDA and SimPy wheels (built for that machine), plus
#   the pure-Python dependencies of tvwsim that its image does not ship (pydantic for the
#   sweep specs and rows, tomlkit, tqdm, nvidia-ml-py), downloaded for CPython 3.12 on
#   x86_64 Linux, the GPU machine's Python.
#
# benchmarks/gpu_campaign.sh installs everything in .whl into /tmp/site with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
device_dir=${DEVICE_DIR:-../shared/device}
if [ -x "$device_dir/prepare.sh" ]; then
    "$device_dir/prepare.sh"
else
    echo "no $device_dir/prepare.sh: PyCUDA and SimPy wheels must be put in .whl by hand" >&2
    mkdir -p .whl
fi
python3 -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any \
    -d .whl "pydantic>=2" "tomlkit>=0.12" "tqdm>=4.66" "nvidia-ml-py>=12"
echo "wheels for the GPU machine in .whl/:"
ls .whl
