#!/usr/bin/env bash
# A live run on the Ray cluster that ../../cluster.yaml describes (AWS: one H100 node and
# one CPU node come up), next to the simulator's prediction for the same cluster.
#
#   examples/cluster/run_on_cluster.sh [TRACE] [POLICY]
#
# Needs AWS credentials and boto3 (docs/cluster.md). It leaves the cluster up:
# `ray down -y cluster.yaml` stops paying for it.
set -euo pipefail
cd "$(dirname "$0")/../.."                  # the repository root: cluster.yaml, your code
TRACE=${1:-../shared/traces/azure_llm_2023_conv.csv}
POLICY=${2:-adaptive}
NAME=$POLICY-$(date +%Y%m%d-%H%M%S)

# 1. Predict it first, for free: the simulator on the same cluster.yaml.
attnsched simulate "$TRACE" --cluster cluster.yaml --policy "$POLICY" --limit 4000 \
    --out "runs/$NAME-sim"

# 2. Start the cluster (head, then min_workers of each node type) and send it the trace.
ray up -y cluster.yaml
ray exec cluster.yaml "mkdir -p /home/ubuntu/traces /home/ubuntu/runs"
ray rsync-up cluster.yaml "$TRACE" /home/ubuntu/traces/trace.csv

# 3. Submit the run as a Ray job through the dashboard, forwarded to localhost:8265.
ray dashboard cluster.yaml &
FORWARD=$!
trap 'kill $FORWARD' EXIT
sleep 10
ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
    attnsched run /home/ubuntu/traces/trace.csv --address auto --policy "$POLICY" \
    --limit 4000 --cpu-workers 4 --out "/home/ubuntu/runs/$NAME"

# 4. Bring the outputs home and compare the prediction with what happened.
ray rsync-down cluster.yaml "/home/ubuntu/runs/$NAME/" "runs/$NAME/"
attnsched report "runs/$NAME-sim" "runs/$NAME" --out "runs/$NAME-report"
echo "report: runs/$NAME-report/report.html; when done: ray down -y cluster.yaml"
