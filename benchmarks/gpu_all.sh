#!/usr/bin/env bash
# Every GPU check of the zoo in one pass on a CUDA machine: the gpu-marked tests, then each family's benchmark
# with --device cuda, each under its own time limit inside an overall budget, so that a short lease returns
# what finished. Results land in benchmarks/results/*_cuda*; OUTDIR receives log.txt and results.tar.gz (the new
# result files, refreshed after every step).
#
#     bash benchmarks/gpu_all.sh OUTDIR [BUDGET_SECONDS=480]
#     GPU_STEPS="sigma hopfield" bash benchmarks/gpu_all.sh OUTDIR 200     # only these steps, in this order
#
# GPU_PYTEST_ARGS adds options to the tests step (e.g. "-n 4" where pytest-xdist is installed). The facet_mace step
# needs a trained MACE model (MACE_MODEL, default .gpucache/mace.model) and either PAPERZOO_MACE_VENV or the wheels
# of mace-torch and its pins in .whl_mace (installed into their own folder, see mace_env).
#
# Each step writes to OUTDIR/log.txt directly (not through a pipe): a process a step leaves behind (a compile or
# pytest worker) could hold a pipe open and stall the script past any budget, and a lease stopped at its limit
# returns nothing. Give the device call's timeout 90 s more than BUDGET for the machine's setup and the imports.
# The package must be importable (pip install -e ".[test]"); the EMT data and the LM corpus are generated
# into $PAPERZOO_CACHE on first use (or carried there).
set -u
out=${1:?usage: gpu_all.sh OUTDIR [BUDGET_SECONDS]}
budget=${2:-480}
mkdir -p "$out" benchmarks/results
begin=$(date +%s)
marker=$(mktemp)
trap 'rm -f "$marker"' EXIT
log=$out/log.txt
: >"$log"
export PYTHONUNBUFFERED=1

say() { echo "$*" | tee -a "$log"; }

step() {  # step NAME LIMIT_SECONDS COMMAND...  (runs when its name is the current one)
  local name=$1 limit=$2 left t rc
  shift 2
  [[ $name != "$current" ]] && return
  left=$((budget - ($(date +%s) - begin)))
  ((limit > left)) && limit=$left
  if ((limit < 15)); then say "## $name: skipped, budget spent"; return; fi
  say "## $name (limit ${limit} s): $*"
  t=$(date +%s)
  timeout -k 5 "$limit" "$@" >>"$log" 2>&1 </dev/null
  rc=$?
  say "## $name: exit $rc after $(($(date +%s) - t)) s"
  find benchmarks/results -type f -newer "$marker" | tar -czf "$out/results.tar.gz.part" -T - &&
    mv "$out/results.tar.gz.part" "$out/results.tar.gz"
}

mace_env() {  # a MACE "venv" for facet_mace (mace-torch pins e3nn 0.4.4, paperzoo needs 0.6): the wheels in
  # .whl_mace go to their own folder, and a python wrapper puts that folder first on its path
  local site=/tmp/mace_site venv=/tmp/mace_venv
  [[ -n ${PAPERZOO_MACE_VENV:-} || ! -d .whl_mace ]] && return
  python -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl_mace/*.whl >>"$log" 2>&1 || return
  mkdir -p "$venv/bin"
  printf '#!/bin/sh\nPYTHONPATH=%s:${PYTHONPATH:-} exec python3 "$@"\n' "$site" >"$venv/bin/python"
  chmod +x "$venv/bin/python"
  export PAPERZOO_MACE_VENV=$venv
}

all_steps() {
  step tests 180 python -m pytest -m gpu -q -p no:cacheprovider --no-header -rs ${GPU_PYTEST_ARGS:-} tests
  step hopfield 90 python benchmarks/hopfield_speed.py
  step hopfield_b8 120 python benchmarks/hopfield_speed.py --batch 8 --tag _b8
  step grassmann_bf16 90 python benchmarks/bench_grassmann.py --device cuda --lengths 512 1024 2048 4096 8192 16384 \
    --tokens 65536 --dtype bfloat16 --out bench_grassmann_cuda_bf16
  step grassmann_profile 60 python benchmarks/bench_grassmann.py --device cuda --lengths 4096 --tokens 65536 \
    --dtype bfloat16 --reps 3 --gen-tokens 0 --profile --out bench_grassmann_cuda_bf16_profile
  step grassmann_compiled 150 python benchmarks/bench_grassmann.py --device cuda --lengths 4096 16384 --tokens 65536 \
    --dtype bfloat16 --compile --gen-tokens 0 --out bench_grassmann_cuda_bf16_compiled
  step grassmann_fp32 90 python benchmarks/bench_grassmann.py --device cuda --lengths 512 1024 2048 4096 8192 16384 \
    --tokens 65536 --out bench_grassmann_cuda
  step estimators 120 python benchmarks/bench_estimators.py --device cuda --ksg-n 10000 100000
  step sigma 90 python benchmarks/sigma_overhead.py --device cuda --batch 64
  step sigma_bf16 90 python benchmarks/sigma_overhead.py --device cuda --batch 64 --bf16
  step sigma_compiled 150 python benchmarks/sigma_overhead.py --device cuda --batch 64 --bf16 --compile --rounds 2
  step coord_attention_eager 90 python benchmarks/coord_attention_speed.py --device cuda --seconds 0.25 --rounds 2 --no-compile
  step coord_attention 180 python benchmarks/coord_attention_speed.py --device cuda --seconds 0.5 --compile-batches 64
  step facet 120 python benchmarks/facet_vs_mace.py --device cuda --sides facet --parts speed relax --relax 20 \
    --facet weights/files/facet_small_emt.safetensors --out benchmarks/results
  [[ $current == facet_mace ]] && mace_env
  step facet_mace 300 python benchmarks/facet_vs_mace.py --device cuda --parts speed relax --relax 20 \
    --facet weights/files/facet_small_emt.safetensors --mace-model "${MACE_MODEL:-.gpucache/mace.model}" \
    --out benchmarks/results
  step pvrnn 90 python benchmarks/pvrnn_speed.py --device cuda
  step train_eager 90 python -m train.cli train sigma-vit-digits --out /tmp/gpu_runs/eager
  step train_compiled 120 python -m train.cli train sigma-vit-digits --out /tmp/gpu_runs/compiled --set train.compile=true
}
# the default order puts first what no lease has measured yet (as of 2026-11-28: the fused KSG kernels, the
# sigmaReparam bf16 fix, the compiled sigmaReparam and Grassmann rows, the folded Pluecker projection, the
# float32 Grassmann table)
default="estimators tests sigma_bf16 sigma_compiled grassmann_bf16 grassmann_profile grassmann_compiled grassmann_fp32 hopfield
  hopfield_b8 facet_mace sigma coord_attention_eager coord_attention facet pvrnn train_eager train_compiled"

nvidia-smi -L >>"$log" 2>&1
for current in ${GPU_STEPS:-$default}; do
  [[ " $(echo $default) " == *" $current "* ]] || say "## $current: no such step (steps: $(echo $default))"
  all_steps
done
for run in eager compiled; do
  [ -f /tmp/gpu_runs/$run/summary.json ] && say "$run summary: $(tr -d '\n ' < /tmp/gpu_runs/$run/summary.json)"
done
say "## total $(($(date +%s) - begin)) s"
echo "---- end of $log:"
tail -c 6000 "$log"
