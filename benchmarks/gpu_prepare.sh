#!/usr/bin/env bash
# Prepare, on a machine that reaches the package registry, what benchmarks/gpu_all.sh needs on an offline GPU
# machine whose image has Python 3.12 (x86-64), torch, triton and e3nn but lacks or has too old some of our needs:
#   .whl       transformers>=5.24, tokenizers, timm, ase, vesin (install there with pip --target, see README)
#   .whl_mace  mace-torch 0.3.16 and what it needs beyond that image (e3nn 0.4.4, matscipy, ...), for facet_mace
#   .gpucache  a copy of $PAPERZOO_CACHE (EMT data, LM corpus) with a MACE model trained on the EMT data
# Run from the repository root; keep the three folders out of git (e.g. in .git/info/exclude).
#
#     bash benchmarks/gpu_prepare.sh            # skips what exists; the MACE model takes ~7 min on 2 CPU cores
set -euo pipefail
platform=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() {  # download FOLDER PACKAGE==VERSION...
  local dir=$1
  shift
  for pkg in "$@"; do
    python3 -m pip download -q --no-deps "${platform[@]}" -d "$dir" "$pkg"
  done
}

download .whl transformers==5.24.0 tokenizers==0.23.3 timm==1.0.31 ase==3.29.0 vesin==0.6.2
download .whl_mace mace-torch==0.3.16 e3nn==0.4.4 configargparse==1.9.0 GitPython==3.2.1 gitdb==4.0.12 \
  smmap==5.0.3 lmdb==3.0.0 matscipy==1.3.1 orjson==3.13.0 prettytable==3.18.0 wcwidth==0.9.4 torch-ema==0.3 \
  torchmetrics==1.9.0 lightning-utilities==0.15.3 h5py==3.16.0  # mace.calculators imports these three
ls .whl_mace/python_hostlist-* >/dev/null 2>&1 ||  # published as a source archive only; pure Python
  python3 -m pip wheel -q --no-deps python-hostlist==2.3.0 -w .whl_mace

cache=${PAPERZOO_CACHE:-$HOME/.cache/paperzoo}
python3 -c "from train.data.emt import emt_dataset; emt_dataset()"  # generates the EMT data if missing
mkdir -p .gpucache
for part in data lm; do  # not the MACE venv that facet_vs_mace.py keeps there by default (over 1 GB)
  [[ -d $cache/$part ]] && cp -r "$cache/$part" .gpucache/
done
if [[ ! -f .gpucache/mace.model ]]; then  # 16 channels, max_L 1, 15 epochs: the README's MACE
  python3 benchmarks/facet_vs_mace.py --facet weights/files/facet_small_emt.safetensors --sides mace \
    --parts evaluate --device cpu --out /tmp/gpu_prepare_mace
  cp /tmp/gpu_prepare_mace/mace_run/mace.model .gpucache/mace.model
fi
du -sh .whl .whl_mace .gpucache
