#!/usr/bin/env bash
# The gateway's added latency with the gateway in its own process pinned to core 0, and the
# benchmark (fake OpenAI-compatible upstream + open-loop load generator) pinned to core 1:
# see services/llm-gateway/benches/overhead.rs for what is measured. Prints its tables and the
# gateway's peak RSS. Extra environment (OVERHEAD_SECONDS, OVERHEAD_LITELLM, ...) passes through.
# Usage: bench/llm-overhead.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin boardroom >/dev/null 2>&1
cargo bench -p boardroom-llm-gateway --bench overhead --no-run >/dev/null 2>&1
BENCH=$(ls -t target/release/deps/overhead-* | grep -v '\.d$' | head -1)
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
cat >"$OUT/gateway.toml" <<'TOML'
[telemetry]
log_level = "warn"
[server]
max_pending = 100000
[llm.models.gpt]
deployments = ["fake"]
[llm.deployments.fake]
provider = "openai"
model = "fake"
base_url = "http://127.0.0.1:18090/v1"
max_idle_connections = 512
TOML
taskset -c 0 target/release/boardroom serve --service llm-gateway --config "$OUT/gateway.toml" 2>"$OUT/gateway.log" &
GATEWAY=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:9094/readyz >/dev/null && break; sleep 0.1; done
OVERHEAD_GATEWAY=127.0.0.1:50054 taskset -c 1 "$BENCH"
echo
echo "Gateway peak RSS: $(awk '/VmHWM/ {printf "%.1f MB", $2/1024}' /proc/$GATEWAY/status)"
