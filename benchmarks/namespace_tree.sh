#!/usr/bin/env bash
# namespace_tree.sh DIR: lay this checkout out under DIR as the installed namespace
# (DIR/tvwsim/{cli,...} plus DIR/tvwsim/{sim,kernels,validate,traces}), made of symlinks,
# so that PYTHONPATH=DIR imports tvwsim.sim etc. without pip.
#
# pyproject's package-dir maps the top-level folders into tvwsim; `pip install .` needs a
# build backend, which a machine without network (the lent GPU machine) may not have.
set -euo pipefail
dir=${1:?usage: namespace_tree.sh DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$dir/tvwsim"
mkdir -p "$dir/tvwsim"
for entry in "$root"/tvwsim/*; do
    ln -s "$entry" "$dir/tvwsim/"
done
for package in sim kernels validate traces; do
    ln -s "$root/$package" "$dir/tvwsim/$package"
done
