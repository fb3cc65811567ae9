#!/bin/sh
# The image's entry point. `docker run IMAGE serve` is how SageMaker starts a container: then
# `pneumo serve` listens on every interface, on $SAGEMAKER_BIND_TO_PORT, else $AIP_HTTP_PORT
# (Vertex AI), else 8080 (SageMaker's port; pneumo serve reads the two variables itself), with
# its prediction log and jobs under $HOME/pneumo-state (the image's volume). These defaults are
# PNEUMO_ variables, set only where the container's environment has not set them, so that
# settings keep their precedence: PNEUMO_HOST=... in the environment wins, and options after
# `serve` win over both (`IMAGE serve --model-repo /opt/ml/model`). Any other arguments run as
# a pneumo command (`docker run IMAGE info`).
set -eu
if [ "${1:-serve}" = serve ]; then
    [ "$#" -gt 0 ] && shift
    export PNEUMO_HOST="${PNEUMO_HOST:-0.0.0.0}"
    export PNEUMO_STATE_DIR="${PNEUMO_STATE_DIR:-${HOME:-/home/pneumo}/pneumo-state}"
    if [ -z "${SAGEMAKER_BIND_TO_PORT:-}${AIP_HTTP_PORT:-}${PNEUMO_PORT:-}" ]; then
        export PNEUMO_PORT=8080
    fi
    exec pneumo serve "$@"
fi
exec pneumo "$@"
