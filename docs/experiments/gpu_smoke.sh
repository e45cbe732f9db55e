#!/usr/bin/env bash
# Does every command run on CUDA? Each once, on a GPU machine with ppd installed.
# Usage: bash docs/experiments/gpu_smoke.sh OUT_DIR
# Each step's log goes to OUT_DIR; the summary lines are printed.
set -u
out=${1:?OUT_DIR}
mkdir -p "$out"
w=$(mktemp -d)
step() {  # step NAME LIMIT_S CMD...: run, keep the log, print its status and last lines
    local name=$1 limit=$2; shift 2
    local t0=$(date +%s)
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc in $(( $(date +%s) - t0 )) s"
    tr '\r' '\n' < "$out/$name.log" | grep -v '^\s*$' | tail -n 4
}
python3 - "$w" <<'PY'
import sys
from PIL import Image
from ppd.data.scenes import ProceduralScenes
s = ProceduralScenes("train", 1, seed=123_456)[0]
Image.fromarray(s.image).save(f"{sys.argv[1]}/scene.png")
PY
step segment 120 ppd segment --image "$w/scene.png" --points "128,128,1" --device cuda --out "$w/seg"
step refine 120 ppd refine --image "$w/scene.png" --points "128,128,1;30,30,1;200,60,0" --device cuda --out "$w/ref"
step refine_bf16 120 ppd refine --image "$w/scene.png" --points "128,128,1;30,30,1;200,60,0" --device cuda --precision bf16 --out "$w/ref16"
step demo 180 ppd demo --device cuda --scenes 2 --out "$w/demo"
step pretrain 240 ppd pretrain --device cuda --steps 40 --eval-every 0 --eval-scenes 4 --out "$w/pre"
step train_ruac 300 ppd train-ruac --device cuda --steps 40 --eval-scenes 4 --out "$w/ruac"
step bench_ruac 300 ppd bench --data train=procedural:train --sample 4 --max-objects 2 --model "bundled+ruac=$w/ruac" --protocol uncertainty --mc-samples 20 --device cuda --out "$w/bench_ruac"
step ruac_latency 300 python3 "$(dirname "$0")/ruac_analytic_vs_mc.py" --ruac "$w/ruac" --domains train --scenes 4 --objects 2 --repeats 3
step env_speed 240 python3 "$(dirname "$0")/env_step_speed.py" --device cuda
