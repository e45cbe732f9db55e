#!/usr/bin/env bash
# Does one GPU train several runs at once faster than one after another?
# Trains 4 seeds of the default recipe and 4 with twice the defender steps, all at once
# on one GPU (fp32), and reports each run's last log line (env steps/s) and the GPU's
# load (docs/gpu.md has the measured numbers).
# Usage (on the GPU machine, ppd importable):
#   bash docs/experiments/gpu_parallel_runs.sh launch RUNS_DIR   # start the runs detached
#   bash docs/experiments/gpu_parallel_runs.sh wait RUNS_DIR SECONDS   # poll until done or SECONDS
set -u
mode=${1:?launch|wait}
runs=$(realpath -m "${2:?RUNS_DIR}")
mkdir -p "$runs"
if [ "$mode" = launch ]; then
    for seed in 0 1 2 3; do
        for variant in base long; do
            extra=""
            [ "$variant" = long ] && extra="--defender-steps 15000"
            name="g${variant}${seed}"
            # from /tmp: in the repository root the source folder ppd/ would shadow the install
            (cd /tmp && OMP_NUM_THREADS=2 setsid nohup python3 -c "from ppd.cli import main; main()" \
                train --device cuda --precision fp32 --seed "$seed" --out "$runs/$name" $extra \
                > "$runs/$name.log" 2>&1 < /dev/null &)
        done
    done
    sleep 5
    echo "launched: $(ls "$runs"/*.log | wc -l) runs"
    exit 0
fi
limit=${3:-560}
t0=$(date +%s)
while true; do
    done_n=$(ls "$runs"/*/metrics.json 2>/dev/null | wc -l)
    el=$(( $(date +%s) - t0 ))
    if [ "$done_n" -ge 8 ] || [ "$el" -ge "$limit" ]; then break; fi
    pgrep -f "ppd.cli" > /dev/null || break
    sleep 20
done
echo "finished runs: $done_n after ${el}s of waiting"
for f in "$runs"/*.log; do
    echo "== $f: $(tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -n 1 | cut -c1-200)"
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
