#!/usr/bin/env bash
# A single-node SLURM cluster on localhost, for the tests of tools/submit.py against a real scheduler.
#
#     tools/slurm_local.sh start|stop|status
#
# start   installs Debian's slurm-wlm and munge when they are missing (apt-get, as root or via sudo),
#         writes /etc/slurm/slurm.conf (one node, this host at 127.0.0.1, partition "debug", no cgroups,
#         no accounting), starts munged (as user munge), slurmctld and slurmd, and waits until the node
#         takes jobs. Idempotent: what is already installed, written or running is left alone.
# stop    stops the daemons this script started (by their pid files under SLURM_LOCAL_STATE); the
#         installation and the state stay.
# status  prints the daemons and `sinfo`; exit status 0 when the cluster takes jobs, 1 otherwise.
#
# Environment: SLURM_LOCAL_STATE (default /var/spool/slurm-local) holds the daemons' state, pid files
# and logs (slurmctld.log, slurmd.log). An /etc/slurm/slurm.conf not written by this script (a real
# cluster's) is never touched: start then stops with a message.
set -euo pipefail

STATE=${SLURM_LOCAL_STATE:-/var/spool/slurm-local}
CONF=/etc/slurm/slurm.conf
MARK="# written by tools/slurm_local.sh"
PARTITION=debug

say() { echo "slurm_local: $*"; }
die() { echo "slurm_local: error: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo -n "$@" || die "'$*' needs root (sudo -n failed)"
  else die "'$*' needs root; run this script as root"; fi
}

pid_alive() {  # pid_alive FILE: the process named in FILE runs
  [ -r "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null
}

install_packages() {
  local missing=0
  for bin in sbatch squeue scontrol slurmctld slurmd munged; do
    command -v "$bin" >/dev/null || [ -x "/usr/sbin/$bin" ] || missing=1
  done
  [ "$missing" = 0 ] && return 0
  command -v apt-get >/dev/null || die "slurm-wlm/munge are missing and there is no apt-get to install them"
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null; then
    as_root apt-get update -q >/dev/null
    as_root apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null \
      || die "apt-get install slurm-wlm munge failed"
  fi
}

write_conf() {
  local host cpus mem tmp
  host=$(hostname -s)
  cpus=$(nproc)
  [ "$cpus" -ge 4 ] || cpus=4  # room for 2-task jobs next to each other; slurmd may overcommit (below)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  tmp=$(mktemp)
  cat >"$tmp" <<EOF
$MARK: a single-node test cluster on localhost.
ClusterName=localcluster
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  if [ -f "$CONF" ] && ! head -n 1 "$CONF" | grep -qF "$MARK"; then
    rm -f "$tmp"
    die "$CONF exists and was not written by this script (a real cluster?); not touching it"
  fi
  if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"
    return 1  # unchanged
  fi
  as_root mkdir -p /etc/slurm
  as_root install -m 0644 "$tmp" "$CONF"
  rm -f "$tmp"
  return 0
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  id munge >/dev/null 2>&1 || die "user munge is missing (is the munge package installed?)"
  as_root mkdir -p /run/munge /var/log/munge /var/lib/munge
  as_root chown munge:munge /run/munge /var/log/munge /var/lib/munge
  as_root chmod 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    as_root dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  as_root chown munge:munge /etc/munge/munge.key
  as_root chmod 0400 /etc/munge/munge.key
  as_root runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
      # remember that this script started it (stop leaves a munged it did not start alone)
      [ -r /run/munge/munged.pid ] && as_root cp /run/munge/munged.pid "$STATE/munged.pid"
      return 0
    fi
    sleep 0.2
  done
  die "munged did not start (see /var/log/munge/munged.log)"
}

node_state() {
  sinfo -h -N -o "%T" 2>/dev/null | head -n 1
}

ready() {
  case "$(node_state)" in
    idle*|mixed*|allocated*|completing*) return 0 ;;
  esac
  return 1
}

start() {
  install_packages
  local changed=0
  write_conf && changed=1
  as_root mkdir -p "$STATE/ctld" "$STATE/d"
  start_munge
  if [ "$changed" = 1 ] && { pid_alive "$STATE/slurmctld.pid" || pid_alive "$STATE/slurmd.pid"; }; then
    say "slurm.conf changed: restarting the daemons"
    stop_daemons
  fi
  pid_alive "$STATE/slurmctld.pid" || as_root /usr/sbin/slurmctld
  pid_alive "$STATE/slurmd.pid" || as_root /usr/sbin/slurmd
  local state
  for _ in $(seq 120); do
    ready && { say "up: node $(hostname -s), partition $PARTITION ($(node_state))"; return 0; }
    state=$(node_state)
    case "$state" in
      down*|drain*|fail*) as_root scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  sinfo >&2 || true
  tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 2>/dev/null || true
  die "the node did not become ready in 60 s (logs in $STATE)"
}

stop_daemons() {
  local name file pid
  for name in slurmd slurmctld; do
    file="$STATE/$name.pid"
    if pid_alive "$file"; then
      pid=$(cat "$file")
      as_root kill "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && die "$name (pid $pid) did not stop"
      say "stopped $name"
    fi
  done
}

stop() {
  stop_daemons
  local file="$STATE/munged.pid"
  if pid_alive "$file"; then
    as_root kill "$(cat "$file")"
    as_root rm -f "$file"
    say "stopped munged"
  fi
}

status() {
  local name
  for name in slurmctld slurmd; do
    if pid_alive "$STATE/$name.pid"; then say "$name running (pid $(cat "$STATE/$name.pid"))"
    else say "$name not running"; fi
  done
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then say "munged running"; else say "munged not running"; fi
  if command -v sinfo >/dev/null && ready; then
    sinfo
    return 0
  fi
  say "the cluster does not take jobs"
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
