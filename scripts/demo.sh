#!/usr/bin/env bash
# The demo: a broker with its built-in dev issuer (INSECURE, loopback only), a login as alice,
# and the targets she may reach. Everything lives in .demo/; your own hoopctl login is untouched.
#   HOOP_DEMO_SSH_PORT (2222), HOOP_DEMO_DEV_PORT (2280), HOOP_DEMO_EXIT=1 to stop after showing,
#   HOOP_DEMO_DIR (.demo) for its files.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin="$root/.venv/bin"
demo="${HOOP_DEMO_DIR:-$root/.demo}"
ssh_port=${HOOP_DEMO_SSH_PORT:-2222}
dev_port=${HOOP_DEMO_DEV_PORT:-2280}

mkdir -p "$demo"
sed -e "s|@SSH_PORT@|$ssh_port|; s|@DEV_PORT@|$dev_port|; s|@DATA_DIR@|$demo/broker-data|g" \
    examples/demo.toml > "$demo/broker.toml"
"$bin/hoop-broker" check-config "$demo/broker.toml"

"$bin/hoop-broker" serve --dev --config "$demo/broker.toml" >"$demo/audit.jsonl" 2>"$demo/broker.log" &
broker_pid=$!
trap 'kill $broker_pid 2>/dev/null; wait $broker_pid 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
    grep -q "listening on" "$demo/broker.log" && break
    kill -0 $broker_pid 2>/dev/null || { cat "$demo/broker.log" >&2; exit 1; }
    sleep 0.1
done
fingerprint=$(grep -o 'host key SHA256:[^)]*' "$demo/broker.log" | head -1 | cut -d' ' -f3)
[ -n "$fingerprint" ] || { echo "broker did not start:" >&2; cat "$demo/broker.log" >&2; exit 1; }

# The demo user's own config and keyring, inside .demo/.
export XDG_CONFIG_HOME="$demo/client/config" XDG_DATA_HOME="$demo/client/data"
export PYTHON_KEYRING_BACKEND=keyrings.alt.file.PlaintextKeyring
export HOOP_BROKER="127.0.0.1:$ssh_port"

echo "== broker on 127.0.0.1:$ssh_port, host key $fingerprint (log: .demo/broker.log, audit: .demo/audit.jsonl)"
echo "== hoopctl login (the dev issuer approves alice at once)"
"$bin/hoopctl" login --accept-host-key "$fingerprint" --no-browser
echo "== hoopctl whoami"
"$bin/hoopctl" whoami
echo "== hoopctl targets"
"$bin/hoopctl" targets

if [ "${HOOP_DEMO_EXIT:-0}" = "1" ]; then
    exit 0
fi
cat <<MSG

The broker keeps running. In another terminal, try:
  export XDG_CONFIG_HOME=$demo/client/config XDG_DATA_HOME=$demo/client/data \\
         PYTHON_KEYRING_BACKEND=keyrings.alt.file.PlaintextKeyring HOOP_BROKER=127.0.0.1:$ssh_port
  $bin/hoopctl whoami
Press Ctrl-C to stop the broker.
MSG
wait $broker_pid
