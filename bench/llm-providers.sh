#!/usr/bin/env bash
# The provider adapters' overhead (in-process gateway, fakes of each wire format at 50 ms) and
# the OpenAI-compatible front door against LiteLLM's proxy: the same HTTP client, closed loop
# at 8 and 64 connections, both proxies in front of the same fake upstream (127.0.0.1:18090,
# served by the bench), the gateway as its own release process. See
# services/llm-gateway/benches/providers.rs. Prints the tables and both proxies' peak RSS.
# LITELLM=0 skips LiteLLM (bench/litellm.sh installs it into a venv when missing). Each proxy
# runs pinned to core 0 (the gateway's runtime and LiteLLM's two workers get the same one
# core), the bench (load generator and fake upstream) to core 1.
# Usage: bench/llm-providers.sh      (env: PROVIDERS_SECONDS, PROVIDERS_RPS, CARGO_TARGET_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --bin boardroom >/dev/null 2>&1
cargo bench -p boardroom-llm-gateway --bench providers --no-run >/dev/null 2>&1
BENCH=$(ls -t "$TARGET"/release/deps/providers-* | grep -v '\.d$' | head -1)
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$OUT"' EXIT
cat >"$OUT/gateway.toml" <<'TOML'
[telemetry]
log_level = "warn"
[server]
max_pending = 100000
[llm.listen]
grpc_addr = "127.0.0.1:18055"
admin_addr = "127.0.0.1:18095"
[llm.openai_api]
addr = "127.0.0.1:18054"
[llm.models.fake]
deployments = ["fake"]
[llm.deployments.fake]
provider = "openai"
model = "fake"
base_url = "http://127.0.0.1:18090/v1"
max_idle_connections = 512
TOML
taskset -c 0 "$TARGET/release/boardroom" serve --service llm-gateway --config "$OUT/gateway.toml" 2>"$OUT/gateway.log" &
GATEWAY=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:18095/readyz >/dev/null && break; sleep 0.1; done
# The adapters and the gateway's front door first, alone on the machine; then LiteLLM starts
# (its start and its background work after a burst are CPU-heavy, on the core it shares with
# the gateway) and is measured while the gateway is idle.
PROVIDERS_FRONT_DOOR=http://127.0.0.1:18054/v1 taskset -c 1 "$BENCH"
export LITELLM_MASTER_KEY=${LITELLM_MASTER_KEY:-sk-bench}
LITELLM_URL=
if [ "${LITELLM:-1}" != 0 ]; then
  taskset -c 0 bench/litellm.sh >"$OUT/litellm.log" 2>&1 &
  for _ in $(seq 180); do
    curl -sf -H "Authorization: Bearer $LITELLM_MASTER_KEY" 127.0.0.1:4000/v1/models >/dev/null 2>&1 && break
    sleep 0.5
  done
  LITELLM_URL=http://127.0.0.1:4000/v1
  sleep 10
  PROVIDERS_SKIP_ADAPTERS=1 PROVIDERS_LITELLM=$LITELLM_URL taskset -c 1 "$BENCH"
fi
echo
echo "Gateway peak RSS: $(awk '/VmHWM/ {printf "%.1f MB", $2/1024}' /proc/$GATEWAY/status)"
if [ -n "$LITELLM_URL" ]; then
  RSS=$(pgrep -f "${LITELLM_VENV:-/work/venv-litellm}" | xargs -r -I{} awk '/VmRSS/ {print $2}' /proc/{}/status 2>/dev/null | awk '{s+=$1} END {printf "%.0f MB", s/1024}')
  echo "LiteLLM RSS (all its processes): $RSS"
fi
