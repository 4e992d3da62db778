#!/bin/bash
#SBATCH --cpus-per-task=8
#SBATCH --error=/home/alice/.aifb/jobs/svc42/job.err
#SBATCH --gres=gpu:4
#SBATCH --job-name=aifb-vllm-multinode-svc42
#SBATCH --mem=65536M
#SBATCH --nodes=2
#SBATCH --ntasks=2
#SBATCH --output=/home/alice/.aifb/jobs/svc42/job.out
#SBATCH --time=04:00:00
set -euo pipefail
cd -- /home/alice/.aifb/jobs/svc42
export AIFB_METRICS_PATH=/metrics
export AIFB_METRICS_PORT=8000
export AIFB_REPORT_TOKEN=tok-123
export AIFB_SERVER=login1:50051
export AIFB_SERVICE=services/svc42
export TRACEPARENT=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01
exec /opt/aifb/venv/bin/python -m aifb.job.run \
    --service svc42 \
    --workdir /home/alice/.aifb/jobs/svc42 \
    --readiness http \
    --ready-port 8000 \
    --ready-path /health \
    --timeout 3600 \
    --workers '{"argv": ["apptainer", "exec", "--nv", "--env", "VLLM_NO_USAGE_STATS=1", "docker://vllm/vllm-openai:v0.10.1", "ray", "start", "--block", "--address", "{{ head_host }}:6379", "--disable-usage-stats"], "per_node": 1, "on_head": 0, "nodes": 2}' \
    -- apptainer exec --nv --env VLLM_NO_USAGE_STATS=1 docker://vllm/vllm-openai:v0.10.1 bash -c 'ray start --head --port="$1" --disable-usage-stats && shift && exec vllm serve "$@"' vllm-head 6379 meta-llama/Llama-3.1-70B-Instruct --host 0.0.0.0 --port 8000 --distributed-executor-backend ray --tensor-parallel-size 4 --pipeline-parallel-size 2 --gpu-memory-utilization 0.9 --max-model-len 4096
