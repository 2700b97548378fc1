#!/bin/sh
# Regenerate the control API's Python stubs from controller/api/control.proto (committed; see
# docs/architecture.md "The control API"). Needs grpcio-tools (pip install '.[test]').
# Usage: scripts/generate-control-api.sh [OUT_DIR]   (default: controller/api, in place)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/controller/api"}
python=${PYTHON:-"$root/.venv/bin/python"}
[ -x "$python" ] || python=python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Laid out under its import name so the generated code imports boxer.controller.api.control_pb2.
mkdir -p "$work/boxer/controller/api" "$work/out"
cp "$root/controller/api/control.proto" "$work/boxer/controller/api/"
"$python" -m grpc_tools.protoc -I "$work" --python_out="$work/out" --pyi_out="$work/out" \
    --grpc_python_out="$work/out" "$work/boxer/controller/api/control.proto"
mkdir -p "$out"
for f in control_pb2.py control_pb2.pyi control_pb2_grpc.py; do
    cp "$work/out/boxer/controller/api/$f" "$out/$f"
done
