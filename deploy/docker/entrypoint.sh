#!/bin/sh
# The image's entry point. `docker run IMAGE serve` is how SageMaker starts a container: then
# `pneumo serve` listens on every interface, on $SAGEMAKER_BIND_TO_PORT, else $AIP_HTTP_PORT
# (Vertex AI), else 8080 (SageMaker's port; pneumo serve reads the two variables itself), with
# its prediction log and jobs under $HOME/pneumo-state (the image's volume). Options after
# `serve` are passed on, and win (`IMAGE serve --model-repo /opt/ml/model`). Any other
# arguments run as a pneumo command (`docker run IMAGE info`).
set -eu
if [ "${1:-serve}" = serve ]; then
    [ "$#" -gt 0 ] && shift
    if [ -z "${SAGEMAKER_BIND_TO_PORT:-}${AIP_HTTP_PORT:-}" ]; then
        set -- --port 8080 "$@"
    fi
    exec pneumo serve --host 0.0.0.0 --state-dir "${HOME:-/home/pneumo}/pneumo-state" "$@"
fi
exec pneumo "$@"
