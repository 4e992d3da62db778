#!/bin/bash
#SBATCH --account=proj1
#SBATCH --cpus-per-task=2
#SBATCH --error=/home/alice/.aifb/jobs/svc42/job.err
#SBATCH --job-name=aifb-redis-svc42
#SBATCH --mem=1024M
#SBATCH --nodes=1
#SBATCH --output=/home/alice/.aifb/jobs/svc42/job.out
#SBATCH --partition=debug
#SBATCH --time=04:00:00
set -euo pipefail
cd -- /home/alice/.aifb/jobs/svc42
export AIFB_METRICS_PATH=off
export AIFB_REPORT_TOKEN=tok-123
export AIFB_SERVER=login1:50051
export AIFB_SERVICE=services/svc42
export TRACEPARENT=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01
exec /opt/aifb/venv/bin/python -m aifb.job.run \
    --service svc42 \
    --workdir /home/alice/.aifb/jobs/svc42 \
    --readiness tcp \
    --ready-port 6379 \
    --ready-path / \
    --timeout 60 \
    -- redis-server --port 6379 --bind 0.0.0.0 --protected-mode no --save '' --appendonly no --dir /home/alice/.aifb/jobs/svc42 --maxmemory 1gb --maxmemory-policy allkeys-lru --io-threads 1
