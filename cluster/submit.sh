#!/usr/bin/env bash
# cluster/submit.sh search_spaces/paper_ablation.yaml s3://YOUR-BUCKET/mdf-search [-- --fresh]
#
# Submit a study to a running Ray cluster as a Ray job and follow its logs: the plain `ray job submit`
# form of `mdf-search submit`. Run it from the repository root: the working dir (this repo, minus what
# cluster/runtime_env.yaml excludes) is uploaded and the entrypoint runs on the cluster's head.
#
# Reach the cluster's job server first (it listens on the head's loopback only), e.g.
#   ray dashboard cluster/aws.yaml                              # cluster launcher
#   kubectl port-forward svc/mdf-search-head-svc 8265:8265      # KubeRay
#   ssh -L 8265:localhost:8265 HEAD                             # anything with SSH to the head
# Token auth: the cluster's token in ~/.ray/auth_token (or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH).
# Exit status: ray job submit's own (non-zero when the job FAILED or was STOPPED).
set -euo pipefail

SPACE=${1:?usage: cluster/submit.sh SPACE.yaml [STORAGE] [-- extra mdf-search sweep args]}
STORAGE=${2:-}
shift $(( $# >= 2 ? 2 : 1 ))
[[ "${1:-}" == "--" ]] && shift

export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
ADDRESS=${RAY_API_SERVER_ADDRESS:-${RAY_ADDRESS:-http://127.0.0.1:8265}}

ARGS=(mdf-search sweep "$SPACE")
[[ -n "$STORAGE" ]] && ARGS+=(--storage "$STORAGE")
ARGS+=("$@")

exec ray job submit --address "$ADDRESS" --working-dir . \
  --runtime-env cluster/runtime_env.yaml -- "${ARGS[@]}"
