# device run 4: gen4 contexts (unmemorisable), H384 L6, batch 256, then the FT variants of run4 (course recipe)
START=$(date +%s); NAME=${NAME:-R8}
cd .scratch/reading2/dev; mkdir -p /tmp/p /tmp/o4
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
nvidia-smi --query-gpu=name --format=csv,noheader
POOL_SCALE=${POOL_SCALE:-0.7} python run4.py pool /tmp/p 2>&1 | grep -v Warn
echo "pool done at +$(( $(date +%s) - START ))s"
export HIDDEN=${HIDDEN:-384} LAYERS=${LAYERS:-6} BATCH=${BATCH:-256} TEXT_W=0.05 TEXT_ROWS=8 PHASE_A=0.3 PHASE_B=0.55 \
  STEPS_MIN=800 STEPS_MAX=30000 PROBE_EVERY=${PROBE_EVERY:-400} GUARD_S=1000 \
  TRAIN_END=$(( START + ${TRAIN_AT:-370} )) POST_END=$(( START + ${POST_AT:-560} )) \
  SAVED_HOOK="cd /tmp/o4 && tar cf - $NAME | split -b 12M - $OUT/$NAME.tar. && cp result_$NAME.json $OUT/ && echo HOOK_SAVED"
timeout $(( START + ${KILL_AT:-585} - $(date +%s) )) python run4.py train $NAME /tmp/p /tmp/o4 > $OUT/log_$NAME.txt 2>&1
echo "rc=$? at +$(( $(date +%s) - START ))s"
cp /tmp/o4/result_$NAME.json $OUT/ 2>/dev/null
grep -v Warn $OUT/log_$NAME.txt | grep -v shards | cut -c1-400 | tail -30; ls -la $OUT
