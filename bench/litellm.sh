#!/usr/bin/env bash
# LiteLLM's proxy, the comparison for the gateway's overhead: port 4000, 2 workers, model
# `fake` routed to the fake upstream on 127.0.0.1:18090 (bench/litellm-config.yaml). Creates
# the venv (LITELLM_VENV, default /work/venv-litellm) with `litellm[proxy]` from PyPI when
# missing, starts the proxy, waits (at most ~90 s) until it answers, then stays in the
# foreground until the proxy exits: run it in the background and kill it to stop.
# Clients send `Authorization: Bearer $LITELLM_MASTER_KEY` (default sk-bench).
# Usage: bench/litellm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LITELLM_VENV:-/work/venv-litellm}
PORT=${LITELLM_PORT:-4000}
export LITELLM_MASTER_KEY=${LITELLM_MASTER_KEY:-sk-bench}
# No network here but the registries: use the cost map shipped in the package, no telemetry.
export LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False LITELLM_LOG=${LITELLM_LOG:-ERROR}

if [ ! -x "$VENV/bin/litellm" ]; then
  echo "bench/litellm.sh: installing litellm[proxy] into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'litellm[proxy]'
fi

"$VENV/bin/litellm" --config bench/litellm-config.yaml --host 127.0.0.1 --port "$PORT" \
  --num_workers 2 &
PROXY=$!
trap 'kill $PROXY 2>/dev/null || true; wait $PROXY 2>/dev/null || true' EXIT
trap 'exit 143' INT TERM

START=$(date +%s)
until curl -sf -H "Authorization: Bearer $LITELLM_MASTER_KEY" \
    "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1; do
  if ! kill -0 $PROXY 2>/dev/null; then
    echo "bench/litellm.sh: the proxy exited before answering" >&2
    exit 1
  fi
  if [ $(($(date +%s) - START)) -ge 90 ]; then
    echo "bench/litellm.sh: the proxy did not answer within 90 s" >&2
    exit 1
  fi
  sleep 0.5
done
echo "bench/litellm.sh: LiteLLM $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))') ready on 127.0.0.1:$PORT after $(($(date +%s) - START)) s" >&2
wait $PROXY
