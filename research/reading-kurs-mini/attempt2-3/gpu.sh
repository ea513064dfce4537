set -x
cd .scratch/reading2/dev; mkdir -p /tmp/p /tmp/o /tmp/m
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
nvidia-smi --query-gpu=name --format=csv,noheader
PLAIN_THREADS=4 python run2.py plain /tmp/o > /tmp/m/log_plain.txt 2>&1 &
python run2.py pool /tmp/p 2>&1 | grep -v Warn
cp /tmp/p/pool_sample.txt /tmp/m/
HIDDEN=256 LAYERS=4 BUDGET_S=${BUDGET:-230} python run2.py train R4 /tmp/p /tmp/o > /tmp/m/log_R4.txt 2>&1 &
HIDDEN=256 LAYERS=6 BUDGET_S=${BUDGET:-230} python run2.py train R6 /tmp/p /tmp/o > /tmp/m/log_R6.txt 2>&1 &
wait
cp /tmp/o/result_*.json /tmp/m/ ; cp /tmp/o/plain/pretrain_info.json /tmp/m/plain_info.json
cd /tmp/o && for n in R4 R6; do tar cf $OUT/$n.tar $n; done; tar cf - plain | split -b 15m - $OUT/plain.tar.
cd /tmp/m && tar cf $OUT/misc.tar .
for f in R4 R6; do grep -v Warn /tmp/m/log_$f.txt | grep -v "shards" | cut -c1-330 | tail -22; done; grep plain /tmp/m/log_plain.txt | cut -c1-900; ls -la $OUT
