set -x
cd .scratch/reading2/dev; mkdir -p /tmp/p /tmp/o2 /tmp/m2
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
[ -f /tmp/p/pool2.pt ] || python run2.py pool /tmp/p 2>&1 | grep -v Warn
HIDDEN=256 LAYERS=6 BUDGET_S=${BUDGET:-200} timeout 330 python run2.py train R6L /tmp/p /tmp/o2 > /tmp/m2/log_R6L.txt 2>&1
cp /tmp/o2/result_*.json /tmp/m2/
cd /tmp/o2 && tar cf $OUT/R6L.tar R6L
cd /tmp/m2 && tar cf $OUT/misc2.tar .
grep -v Warn /tmp/m2/log_R6L.txt | grep -v "shards" | cut -c1-330 | tail -22; ls -la $OUT
