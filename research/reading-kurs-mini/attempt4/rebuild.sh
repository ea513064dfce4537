#!/usr/bin/env bash
# Rebuild the committed Kurs-Mini (R9, reading curriculum v4) from this recipe. Needs a CUDA GPU (~6 minutes on an
# H200: ~70 s task pool on 16 cores, 3219 steps at ~0.09 s); on 2 CPU cores it would take many hours (not measured).
# Usage, from the repository root: bash research/reading-kurs-mini/attempt4/rebuild.sh OUTDIR
# `python -m helpers model build` runs this script and installs OUTDIR/R9 into models/kurs-mini (MANIFEST, checksums).
set -euo pipefail
OUT=$(realpath -m "${1:?usage: rebuild.sh OUTDIR}")
R=research/reading-kurs-mini
W=$(mktemp -d)
cp $R/attempt1/gen.py $R/attempt1/run.py $R/attempt2-3/gen2.py $R/attempt2-3/run2.py $R/attempt2-3/run3.py \
   $R/attempt4/gen4.py $R/attempt4/run4.py "$W"/
PYTHONPATH=. python $R/attempt1/prep.py "$W/data"          # scrubbed non-eval documents, gold splits, tokenizer
cp data/pii/planted_pii.tsv "$W/data/"
mkdir -p "$OUT" "$W/pool"
cd "$W"
POOL_SCALE=1.0 python run4.py pool "$W/pool"
# the schedule of the committed run, fixed (the device run fitted it to its time budget at step 300)
STEPS=3219 HIDDEN=384 LAYERS=6 BATCH=256 TEXT_W=0.05 TEXT_ROWS=8 PHASE_A=0.3 PHASE_B=0.55 PROBE_EVERY=500 \
  CHAT_MAX=128 VARIANTS=gold_ctx_150 python run4.py train R9 "$W/pool" "$OUT"
