#!/usr/bin/env bash
# Install pollctl as a systemd service (idempotent: run it again to upgrade).
#
#   sudo deploy/install.sh              install on this machine
#   deploy/install.sh --dry-run         print every step, change nothing
#   deploy/install.sh --prefix DIR      install the tree under DIR (no user, no systemctl,
#                                       no database): for tests and packaging
#
# Steps: the `pollctl` system user; a virtual environment in /opt/pollctl/.venv with
# pollctl and Flower; /etc/pollctl/pollctl.env from deploy/pollctl.env (never overwritten);
# the units in /etc/systemd/system; `systemctl daemon-reload`; the units a fleet needs
# enabled (not started); `pollctl db upgrade` as the pollctl user.
set -euo pipefail

SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX=""
DRY_RUN=0
PYTHON="${PYTHON:-python3}"

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$PREFIX" ] && [ -d "$PREFIX" ]; then
  PREFIX="$(cd "$PREFIX" && pwd)"
fi

OPT="$PREFIX/opt/pollctl"
VENV="$OPT/.venv"
ETC="$PREFIX/etc/pollctl"
ENV_FILE="$ETC/pollctl.env"
UNITS="$PREFIX/etc/systemd/system"
ENABLE=(pollctl-worker@1.service pollctl-scheduler.service pollctl-beat.service pollctl-api.service pollctl-validate.timer)

step() { printf '==> %s\n' "$*"; }
run() {
  printf '    $ %s\n' "$*"
  [ "$DRY_RUN" = 1 ] || "$@"
}
system_only() {  # a step that changes the machine itself: not under --prefix
  if [ -n "$PREFIX" ]; then printf '    (skipped under --prefix) %s\n' "$*"; else run "$@"; fi
}

step "user pollctl"
if [ -z "$PREFIX" ] && id pollctl > /dev/null 2>&1; then
  echo "    exists"
else
  system_only useradd --system --user-group --home-dir /var/lib/pollctl --no-create-home \
    --shell /usr/sbin/nologin pollctl
fi

step "virtual environment $VENV with pollctl and Flower"
run mkdir -p "$OPT"
[ -x "$VENV/bin/python" ] || run "$PYTHON" -m venv "$VENV"
run "$VENV/bin/pip" install --quiet --upgrade pip
run "$VENV/bin/pip" install --quiet "$SOURCE[flower]"

step "settings $ENV_FILE"
run mkdir -p "$ETC"
if [ -e "$ENV_FILE" ]; then
  echo "    kept (it exists; compare with $SOURCE/deploy/pollctl.env)"
else
  run install -m 0640 "$SOURCE/deploy/pollctl.env" "$ENV_FILE"
  system_only chgrp pollctl "$ENV_FILE"
fi

step "units in $UNITS"
run mkdir -p "$UNITS"
for unit in "$SOURCE"/deploy/pollctl*.service "$SOURCE"/deploy/pollctl*.timer; do
  run install -m 0644 "$unit" "$UNITS/$(basename "$unit")"
done

step "systemd"
system_only systemctl daemon-reload
system_only systemctl enable "${ENABLE[@]}"

step "database schema"
if [ -n "$PREFIX" ]; then
  printf '    (skipped under --prefix) pollctl db upgrade\n'
elif ! run runuser -u pollctl -- env POLLING_ENV_FILE="$ENV_FILE" "$VENV/bin/pollctl" db upgrade; then
  echo "    not migrated: create the database and its role, set POLLING_DATABASE_URL in"
  echo "    $ENV_FILE, then: sudo -u pollctl POLLING_ENV_FILE=$ENV_FILE $VENV/bin/pollctl db upgrade"
fi

cat <<EOF

Installed$([ "$DRY_RUN" = 1 ] && echo " (dry run: nothing changed)")$([ -n "$PREFIX" ] && echo " under $PREFIX"). Next:
  edit $ENV_FILE (database, Redis), then: pollctl db upgrade
  $VENV/bin/pollctl gateway import /etc/pollctl/gateways.yaml
  systemctl start ${ENABLE[*]}
  $VENV/bin/pollctl start && $VENV/bin/pollctl validate
Sites (gateways with \`site: NAME\`): a worker instance N serves the sites named in
  /etc/pollctl/worker-N.env (POLLING_SITES=east), else \`default\`; see README, Deploying.
Look at it: systemctl status 'pollctl*'; journalctl -u 'pollctl*' -f; $VENV/bin/pollctl status
EOF
