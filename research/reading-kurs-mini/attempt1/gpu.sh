set -x
cd .scratch/reading; mkdir -p /tmp/p /tmp/o
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
python -c "import torch,transformers,peft;print(torch.__version__,transformers.__version__,peft.__version__)"
python run.py pool /tmp/p 2>&1 | grep -v Warn
cp /tmp/p/pool_sample.txt $OUT/
HIDDEN=256 LAYERS=4 BUDGET_S=${BUDGET:-330} python run.py train T /tmp/p /tmp/o > $OUT/log_T.txt 2>&1 &
HIDDEN=256 LAYERS=6 BUDGET_S=${BUDGET:-330} python run.py train S /tmp/p /tmp/o > $OUT/log_S.txt 2>&1 &
wait
cd /tmp/o && for n in T S; do tar cf $OUT/$n.tar $n; done; cp result_*.json $OUT/
grep -v Warn $OUT/log_T.txt | cut -c1-400 | tail -30; grep -v Warn $OUT/log_S.txt | cut -c1-300 | tail -14
