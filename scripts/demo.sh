#!/usr/bin/env bash
# The demo: a broker with its built-in dev issuer (INSECURE, loopback only), a SQLite database
# with sample customers, and two people logged in: alice (engineer) and bob (approver and
# incident responder). Everything lives in .demo/; your own hoopctl login is untouched.
# The shell target runs as the OS user hoop-demo, created here when we are root (or may sudo).
#   HOOP_DEMO_SSH_PORT (2222), HOOP_DEMO_DEV_PORT (2280), HOOP_DEMO_EXIT=1 to stop after showing,
#   HOOP_DEMO_DIR (.demo) for its files.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin="$root/.venv/bin"
demo="${HOOP_DEMO_DIR:-$root/.demo}"
ssh_port=${HOOP_DEMO_SSH_PORT:-2222}
dev_port=${HOOP_DEMO_DEV_PORT:-2280}
data="$demo/broker-data"

# The shell target runs as an OS user of its own (run_as = "hoop-demo"), never as the broker's.
demo_user=hoop-demo
PATH="$PATH:/usr/sbin:/sbin"  # useradd
if ! id -u "$demo_user" >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        useradd -m -s /bin/bash "$demo_user"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n useradd -m -s /bin/bash "$demo_user"
    else
        echo "the demo's shell target runs as the OS user $demo_user; create it" \
             "(sudo useradd -m -s /bin/bash $demo_user) and run again" >&2
        exit 1
    fi
    echo "== created the OS user $demo_user (the dev-shell target runs as it)"
fi

mkdir -p "$demo"
sed -e "s|@SSH_PORT@|$ssh_port|; s|@DEV_PORT@|$dev_port|; s|@DATA_DIR@|$data|g" \
    examples/demo.toml > "$demo/broker.toml"
"$bin/hoop-broker" check-config "$demo/broker.toml"
# The demo-db target's database: customers with made-up emails and card numbers, and orders.
"$bin/python" -m broker.defaults demo-db "$data/demo.db"

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

# Each person's own config and keyring, inside .demo/: `source .demo/NAME.env` in a terminal
# to be them (it also puts this checkout's hoopctl first on PATH).
for person in alice bob; do
    cat >"$demo/$person.env" <<ENV
# source me: hoopctl as $person on the demo broker
export XDG_CONFIG_HOME="$demo/$person/config" XDG_DATA_HOME="$demo/$person/data"
export PYTHON_KEYRING_BACKEND=keyrings.alt.file.PlaintextKeyring
export HOOP_BROKER="127.0.0.1:$ssh_port"
export PATH="$bin:\$PATH"
ENV
done
as_person() {
    (
        # shellcheck disable=SC1090
        . "$demo/$1.env"
        shift
        "$bin/hoopctl" "$@"
    )
}

echo "== broker on 127.0.0.1:$ssh_port, host key $fingerprint (log: $demo/broker.log, audit: $demo/audit.jsonl)"
echo "== hoopctl login (the dev issuer approves alice at once)"
as_person alice login --accept-host-key "$fingerprint" --no-browser
echo "== hoopctl login --dev-user bob (any [dev.users] name; in bob's own config)"
as_person bob login --dev-user bob --accept-host-key "$fingerprint" --no-browser
echo "== hoopctl targets (as alice)"
as_person alice targets
echo "== hoopctl exec demo-db -c 'SELECT name, email, card_number, note FROM customers LIMIT 4' (masked in the broker)"
as_person alice exec demo-db -c "SELECT name, email, card_number, note FROM customers LIMIT 4"

if [ "$(id -u)" -ne 0 ]; then
    echo "== note: the broker is not root, so it cannot start dev-shell sessions as $demo_user" \
         "(run the demo as root for those)"
fi

cat <<MSG

The broker keeps running; stop it with Ctrl-C here. Open two more terminals.

Terminal 1, alice the engineer:
  source $demo/alice.env
  hoopctl connect demo-db                  # the SQL shell: SELECT * FROM customers;  \\d  \\q
  hoopctl exec demo-db -c "DROP TABLE orders"                # denied by rule no-drop (exit 3)
  hoopctl exec demo-db -c "DELETE FROM orders"               # waits for bob: rule unbounded-writes-need-review
  hoopctl exec demo-db -c "selec 1;"                         # cannot parse: goes to bob with the cause
  hoopctl connect dev-shell                # bash as $demo_user: try rm -rf /tmp/x (denied), kill 1 (review)

Terminal 2, bob the approver:
  source $demo/bob.env
  hoopctl approve                          # the live queue: a approve, d deny, Enter details, q quit
  hoopctl approvals                        # every request, decided or not

Then bob the incident responder (group secops sees every session):
  hoopctl sessions                         # who did what, where; --state blocked for refusals
  hoopctl sessions search DROP             # the session and the offset where it happened
  hoopctl replay SESSION_ID                # play it back (space, +/-, n, q); --verify checks its signature

To be someone else of [dev.users] in $demo/broker.toml: hoopctl login --dev-user NAME
(it replaces the login of the env file you sourced).
MSG

if [ "${HOOP_DEMO_EXIT:-0}" = "1" ]; then
    exit 0
fi
wait $broker_pid
