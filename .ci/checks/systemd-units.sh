#!/usr/bin/env bash
# The systemd files in systemd/ are valid and the service sandbox scores 1.5 or less:
#  - `systemd-analyze verify` on the .service and .socket, with ExecStart= pointed at the
#    freshly built binary (verify insists the program exists; /usr/bin/shiptoken does not in CI);
#  - `systemd-analyze security --offline=true` with --threshold=15 (the threshold is the
#    exposure level times ten: 15 means 1.5);
#  - the sysusers.d and tmpfiles.d files applied to a scratch root: the user and the group
#    are created and /run/shiptoken gets owner shiptoken, group shiptoken-clients, mode 0750.
# Works in a container without systemd as PID 1. Run after `cargo build`.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v systemd-analyze >/dev/null; then
    echo "installing systemd (for systemd-analyze, systemd-sysusers, systemd-tmpfiles)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

bin="$PWD/target/debug/shiptoken"
[ -x "$bin" ] || { echo "error: $bin missing; run cargo build first" >&2; exit 1; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# verify: copies with ExecStart= rewritten, under the same names (the socket finds its
# service by name).
mkdir -p "$scratch/units"
cp systemd/shiptoken.service systemd/shiptoken.socket "$scratch/units/"
sed -i "s#^ExecStart=/usr/bin/shiptoken #ExecStart=$bin #" "$scratch/units/shiptoken.service"
grep -q "^ExecStart=$bin serve " "$scratch/units/shiptoken.service" \
    || { echo "error: ExecStart=/usr/bin/shiptoken serve ... not found in shiptoken.service" >&2; exit 1; }
out=$(systemd-analyze verify "$scratch/units/shiptoken.service" "$scratch/units/shiptoken.socket" 2>&1) || {
    echo "$out" >&2
    echo "error: systemd-analyze verify failed" >&2
    exit 1
}
# verify exits 0 on some warnings (unknown directives, bad values it skips); any output is
# a finding.
if [ -n "$out" ]; then
    echo "$out" >&2
    echo "error: systemd-analyze verify reported problems" >&2
    exit 1
fi
echo "systemd-analyze verify: clean"

# The command line in the unit must be one the binary accepts.
"$bin" serve --help >/dev/null

score=$(systemd-analyze security --offline=true systemd/shiptoken.service 2>&1 | sed -n 's/.*Overall exposure level for shiptoken.service: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security: exposure $score"
systemd-analyze security --offline=true --threshold=15 systemd/shiptoken.service >/dev/null || {
    systemd-analyze security --offline=true systemd/shiptoken.service | grep '✗' >&2 || true
    echo "error: shiptoken.service exposure $score is above 1.5" >&2
    exit 1
}

# sysusers.d and tmpfiles.d, applied to a scratch root as the package installs them.
root="$scratch/root"
mkdir -p "$root/etc" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d"
cp systemd/shiptoken.sysusers "$root/usr/lib/sysusers.d/shiptoken.conf"
cp systemd/shiptoken.tmpfile "$root/usr/lib/tmpfiles.d/shiptoken.conf"
out=$(systemd-sysusers --root="$root" 2>&1) || { echo "$out" >&2; exit 1; }
uid=$(awk -F: '$1 == "shiptoken" { print $3 }' "$root/etc/passwd")
gid=$(awk -F: '$1 == "shiptoken-clients" { print $3 }' "$root/etc/group")
[ -n "$uid" ] || { echo "error: sysusers did not create user shiptoken" >&2; exit 1; }
[ -n "$gid" ] || { echo "error: sysusers did not create group shiptoken-clients" >&2; exit 1; }
systemd-tmpfiles --root="$root" --create >/dev/null
got=$(stat -c '%u %g %a' "$root/run/shiptoken")
[ "$got" = "$uid $gid 750" ] || {
    echo "error: /run/shiptoken is '$got' (uid gid mode), want '$uid $gid 750'" >&2
    exit 1
}
echo "sysusers.d and tmpfiles.d: user shiptoken ($uid), group shiptoken-clients ($gid), /run/shiptoken 0750"

# The unit and the socket unit must agree on the socket path, user and group.
grep -q '^ListenStream=/run/shiptoken/shiptoken.sock$' systemd/shiptoken.socket
grep -q '^RuntimeDirectory=shiptoken$' systemd/shiptoken.service
grep -q '^User=shiptoken$' systemd/shiptoken.service
grep -q '^SocketGroup=shiptoken-clients$' systemd/shiptoken.socket
grep -q '^Group=shiptoken-clients$' systemd/shiptoken.service
echo "systemd units: ok"
