#!/usr/bin/env bash
# Installs the system programs the tests drive for real: OpenSSH (sshd, ssh, ssh-keygen), tmux,
# asciinema, Node.js and npm. Uses apt when something is missing and we are root; otherwise says
# what to install and fails.
set -euo pipefail

missing=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v asciinema >/dev/null 2>&1 || missing+=(asciinema)
command -v zsh >/dev/null 2>&1 || missing+=(zsh)
command -v less >/dev/null 2>&1 || missing+=(less)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

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
