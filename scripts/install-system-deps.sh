#!/usr/bin/env bash
# Installs the system programs the tests drive for real: OpenSSH (sshd, ssh, ssh-keygen), tmux,
# asciinema, Node.js and npm, and creates the OS users local targets run as in the tests
# (`run_as`: hoop-target, hoop-target2). Uses apt/useradd when something is missing and we are
# root; otherwise says what to do and fails. Safe to run again.
set -euo pipefail

# The OS users the tests' local targets run as: never root, never the broker's own user.
target_users=(hoop-target hoop-target2 hoop-demo)
for name in "${target_users[@]}"; do
    id -u "$name" >/dev/null 2>&1 && continue
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing OS user $name (create it, e.g. sudo useradd -m -s /bin/bash $name)" >&2
        exit 1
    fi
    group=()
    getent group "$name" >/dev/null 2>&1 && group=(-g "$name")
    echo "creating OS user: $name" >&2
    useradd -m -s /bin/bash ${group[@]+"${group[@]}"} "$name"
done

missing=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v asciinema >/dev/null 2>&1 || missing+=(asciinema)
command -v zsh >/dev/null 2>&1 || missing+=(zsh)
command -v less >/dev/null 2>&1 || missing+=(less)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# Native clients through hoopctl proxy: psql/pg_dump/pgbench, the mariadb client, and the
# JDBC drivers DBeaver uses (run with the JDK's single-file launcher).
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || missing+=(postgresql-contrib)
command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v java >/dev/null 2>&1 || missing+=(default-jdk-headless)
[ -e /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
[ -e /usr/share/java/mariadb-java-client.jar ] || missing+=(libmariadb-java)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${missing[*]} (install them, e.g. sudo apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
