# device run 3: R6X = R6L recipe, longer (phase A 35%, B2/absent last 40%, text_w 0.05 x 8 rows), hard wall-clock guards
START=$(date +%s)
cd .scratch/reading2/dev; mkdir -p /tmp/p /tmp/o3
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
nvidia-smi --query-gpu=name --format=csv,noheader
python run2.py pool /tmp/p 2>&1 | grep -v Warn
echo "pool done at +$(( $(date +%s) - START ))s"
export HIDDEN=256 LAYERS=6 TEXT_W=0.05 TEXT_ROWS=8 PHASE_A=0.35 PHASE_B=0.60 GUARD_S=200 \
  TRAIN_END=$(( START + ${TRAIN_AT:-225} )) POST_END=$(( START + ${POST_AT:-272} )) \
  SAVED_HOOK="cd /tmp/o3 && tar cf $OUT/R6X.tar R6X && cp result_R6X.json $OUT/ && echo HOOK_SAVED"
timeout $(( START + ${KILL_AT:-279} - $(date +%s) )) python run3.py train R6X /tmp/p /tmp/o3 > $OUT/log_R6X.txt 2>&1
echo "rc=$? at +$(( $(date +%s) - START ))s"
cp /tmp/o3/result_R6X.json $OUT/ 2>/dev/null
grep -v Warn $OUT/log_R6X.txt | grep -v shards | cut -c1-330 | tail -25; ls -la $OUT
