#!/usr/bin/env bash
# The semantic cache through a release `boardroom serve --service llm-gateway`, as a client
# sees it: all-MiniLM-L6-v2 embeddings from ../shared/tools/embedserver.py (started here on
# 127.0.0.1:18002 unless SEMANTIC_EMBEDDINGS_URL names one), the mock model, the default
# threshold unless SEMANTIC_THRESHOLD is set, and bench/semantic_eval.py (the `openai` SDK)
# asking each pair's a then b in a scope of its own.
# Usage: bench/semantic.sh [SET.tsv ...]   (default: the development half; the test half is
#        services/llm-gateway/benches/semantic/test.tsv)
# Env: EMBED_PYTHON (a Python with the embedserver's packages, default /opt/tools/embed/bin/python),
#      EVAL_PYTHON (a Python with `openai`, default: EMBED_PYTHON), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
SETS=("$@")
[ ${#SETS[@]} -gt 0 ] || SETS=(services/llm-gateway/benches/semantic/dev.tsv)
EMBED_PYTHON=${EMBED_PYTHON:-/opt/tools/embed/bin/python}
EVAL_PYTHON=${EVAL_PYTHON:-$EMBED_PYTHON}
cargo build --release --bin boardroom >/dev/null 2>&1
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$OUT"' EXIT
EMBEDDINGS=${SEMANTIC_EMBEDDINGS_URL:-}
if [ -z "$EMBEDDINGS" ]; then
  "$EMBED_PYTHON" ../shared/tools/embedserver.py --host 127.0.0.1 --port 18002 2>"$OUT/embed.log" &
  EMBEDDINGS=http://127.0.0.1:18002/v1
  for _ in $(seq 300); do curl -sf 127.0.0.1:18002/health >/dev/null && break; sleep 0.1; done
fi
cat >"$OUT/gateway.toml" <<TOML
[telemetry]
log_level = "warn"
[llm.listen]
grpc_addr = "127.0.0.1:18155"
admin_addr = "127.0.0.1:18195"
[llm.openai_api]
addr = "127.0.0.1:18154"
[llm.semantic]
embedding_model = "minilm"
${SEMANTIC_THRESHOLD:+threshold = $SEMANTIC_THRESHOLD}
[llm.models.gpt]
deployments = ["mock"]
semantic_cache = true
[llm.models.minilm]
deployments = ["minilm"]
[llm.deployments.minilm]
provider = "openai"
model = "all-MiniLM-L6-v2"
base_url = "$EMBEDDINGS"
TOML
"$TARGET/release/boardroom" serve --service llm-gateway --config "$OUT/gateway.toml" 2>"$OUT/gateway.log" &
for _ in $(seq 300); do curl -sf 127.0.0.1:18195/readyz >/dev/null && break; sleep 0.1; done
"$EVAL_PYTHON" bench/semantic_eval.py http://127.0.0.1:18154/v1 gpt "${SETS[@]}"
echo
curl -s 127.0.0.1:18195/metrics | grep -E '^llm_semantic' || true
