#!/usr/bin/env bash
# start-slurm.sh - run a real single-node SLURM 22.05 cluster on this machine for aifb's tests.
#
#   scripts/start-slurm.sh [start|stop|status|env]       (default: start)
#
# start   Idempotent. Installs the Debian packages when missing, writes a single-node config
#         under $AIFB_SLURM_DIR, starts munged, slurmctld, slurmd and two slurmrestd listeners
#         (UNIX socket with rest_auth/local; 127.0.0.1:$AIFB_SLURMREST_PORT with JWT), waits until
#         the node and both listeners answer, records every PID it started in $AIFB_SLURM_DIR/run,
#         and prints one summary line. The settings for clients are in $AIFB_SLURM_DIR/env.
# stop    Cancels the jobs still queued, then kills ONLY the PIDs recorded by `start`.
# status  Recorded PIDs, whether they are alive, and sinfo.
# env     Prints $AIFB_SLURM_DIR/env (KEY=value lines: SLURM_CONF, socket path, REST URL).
#
# Knobs: AIFB_SLURM_DIR (default /tmp/aifb-slurm), AIFB_SLURM_CPUS (CPUs advertised, default 8),
# AIFB_SLURM_DEFMEM (DefMemPerCPU in MB, default 100), AIFB_SLURM_MINJOBAGE (default 300),
# AIFB_SLURMREST_USER (default slurmrest), AIFB_SLURMREST_PORT (default 6820),
# AIFB_SLURM_LINK_ETC (default 1: make /etc/slurm/slurm.conf a symlink to our config),
# AIFB_SLURM_WAIT_S (default 60).
set -euo pipefail

action=${1:-start}
dir=$(realpath -m "${AIFB_SLURM_DIR:-/tmp/aifb-slurm}")
conf=$dir/etc/slurm.conf
run=$dir/run
logs=$dir/log
rest_user=${AIFB_SLURMREST_USER:-slurmrest}
rest_port=${AIFB_SLURMREST_PORT:-6820}
rest_sock=$dir/rest/slurmrestd.sock
wait_s=${AIFB_SLURM_WAIT_S:-60}
packages=(munge slurmctld slurmd slurm-client slurmrestd slurm-wlm-jwt-plugin curl)
rest_plugins=openapi/v0.0.36,openapi/v0.0.37,openapi/v0.0.38   # dbv0.0.3x abort without slurmdbd
export SLURM_CONF=$conf

say() { printf 'start-slurm: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# alive NAME: the PID recorded in $run/NAME.pid is a live, non-zombie process running COMM
alive() {
  local pid stat comm
  pid=$(cat "$run/$1.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  read -r stat comm < <(ps -o stat=,comm= -p "$pid" 2>/dev/null) || return 1
  [[ $stat != Z* && $comm == "$2" ]]
}

# gone PID: no such process, or only a zombie (gVisor reaps orphans lazily)
gone() { ! ps -o stat= -p "$1" 2>/dev/null | grep -qv '^Z'; }

# wait_for SECONDS CMD...: run CMD every 0.1 s until it succeeds or SECONDS pass
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

install_packages() {
  local missing=() p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  [[ $(id -u) == 0 ]] || die "missing packages (${missing[*]}) and not root: cannot install"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -q -o DPkg::Lock::Timeout=600 update >"$logs/apt.log" 2>&1 \
    || die "apt-get update failed, see $logs/apt.log"
  apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends "${missing[@]}" \
    >>"$logs/apt.log" 2>&1 || die "apt-get install ${missing[*]} failed, see $logs/apt.log"
}

write_config() {
  local host hw cpus realmem jwt_key=$dir/etc/jwt_hs256.key
  host=$(hostname -s)
  hw=$(slurmd -C | head -n 1)
  realmem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  cpus=${AIFB_SLURM_CPUS:-8}
  if [[ ! -s $jwt_key ]]; then
    (umask 077 && head -c 32 /dev/urandom >"$jwt_key")
  fi
  chmod 0600 "$jwt_key"
  cat >"$conf.new" <<EOF
# Written by aifb scripts/start-slurm.sh: one node on localhost, no cgroups, no slurmdbd.
ClusterName=aifb
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$jwt_key
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=${AIFB_SLURM_DEFMEM:-100}
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
EnforcePartLimits=ALL
ReturnToService=2
MinJobAge=${AIFB_SLURM_MINJOBAGE:-300}
KillWait=5
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$logs/jobcomp.txt
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$realmem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  if cmp -s "$conf.new" "$conf"; then
    rm -f "$conf.new"
  else
    alive slurmctld slurmctld && say "warning: config changed while slurmctld runs; '$0 stop' then start to apply"
    mv "$conf.new" "$conf"
  fi
  if [[ ${AIFB_SLURM_LINK_ETC:-1} == 1 ]]; then
    mkdir -p /etc/slurm
    if [[ -L /etc/slurm/slurm.conf || ! -e /etc/slurm/slurm.conf ]]; then
      ln -sfn "$conf" /etc/slurm/slurm.conf
    fi
  fi
  cat >"$dir/env" <<EOF
SLURM_CONF=$conf
AIFB_SLURMREST_SOCKET=$rest_sock
AIFB_SLURMREST_UNIX_URL=unix:$rest_sock
AIFB_SLURMREST_URL=http://127.0.0.1:$rest_port
EOF
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey -c -k /etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0600 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 0755 /run/munge
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0   # a munged answers already
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged 9>&-   # fd 9 holds our lock: daemons must not keep it
  wait_for 10 test -s /run/munge/munged.pid || die "munged did not start"
  cp /run/munge/munged.pid "$run/munged.pid"
  wait_for 10 bash -c 'munge -n | unmunge' || die "munge does not work"
}

start_daemons() {
  if ! alive slurmctld slurmctld; then
    rm -f "$run/slurmctld.pid"
    /usr/sbin/slurmctld -f "$conf" 9>&-
  fi
  if ! alive slurmd slurmd; then
    rm -f "$run/slurmd.pid"
    /usr/sbin/slurmd -f "$conf" 9>&-
  fi
}

node_usable() {
  local state
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1)
  case $state in
    idle | mixed | allocated | completing) return 0 ;;
    down* | drain*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
  esac
  return 1
}

rest_local_ok() { curl -sf --unix-socket "$rest_sock" http://localhost/slurm/v0.0.38/ping; }

rest_jwt_ok() {
  local token
  token=$(scontrol token username=root lifespan=60 2>/dev/null) || return 1
  curl -sf -H "X-SLURM-USER-NAME: root" -H "X-SLURM-USER-TOKEN: ${token#SLURM_JWT=}" \
    "http://127.0.0.1:$rest_port/slurm/v0.0.38/ping"
}

start_rest() {
  id "$rest_user" >/dev/null 2>&1 || useradd -r -M -s /usr/sbin/nologin "$rest_user"
  mkdir -p "$dir/rest"
  chown "$rest_user": "$dir/rest"   # slurmrestd binds the socket after dropping to this user
  if ! alive slurmrestd-local slurmrestd; then
    rm -f "$rest_sock"
    setsid /usr/sbin/slurmrestd -u "$rest_user" -a rest_auth/local -s "$rest_plugins" \
      "unix:$rest_sock" >>"$logs/slurmrestd-local.log" 2>&1 </dev/null 9>&- &
    echo "$!" >"$run/slurmrestd-local.pid"
  fi
  if ! alive slurmrestd-jwt slurmrestd; then
    SLURM_JWT=daemon setsid /usr/sbin/slurmrestd -u "$rest_user" -a rest_auth/jwt \
      -s "$rest_plugins" "127.0.0.1:$rest_port" >>"$logs/slurmrestd-jwt.log" 2>&1 </dev/null 9>&- &
    echo "$!" >"$run/slurmrestd-jwt.pid"
  fi
  wait_for 10 rest_local_ok || die "slurmrestd on $rest_sock does not answer: $(tail -n 3 "$logs/slurmrestd-local.log")"
  wait_for 10 rest_jwt_ok || die "slurmrestd on 127.0.0.1:$rest_port does not answer: $(tail -n 3 "$logs/slurmrestd-jwt.log")"
}

do_start() {
  mkdir -p "$dir/etc" "$dir/state" "$dir/spool" "$run" "$logs" "$dir/rest"
  chmod 0755 "$dir"
  exec 9>"$dir/.lock"
  flock 9   # two test sessions starting at once take turns
  # The daemons inherit this directory as theirs: not the caller's (a checkout that may be
  # deleted while they run; slurmrestd then fails a job submit on getcwd and exits).
  cd "$dir"
  install_packages
  write_config
  start_munge
  start_daemons
  wait_for "$wait_s" node_usable \
    || die "node not usable after ${wait_s}s: $(tail -n 5 "$logs/slurmctld.log" "$logs/slurmd.log")"
  start_rest
  echo "SLURM up on $(hostname -s): ${AIFB_SLURM_CPUS:-8} CPUs, REST unix:$rest_sock and http://127.0.0.1:$rest_port; settings in $dir/env"
}

do_stop() {
  local jobs name comm pid pids=()
  if alive slurmctld slurmctld; then
    # running jobs' slurmstepd outlive slurmd: cancel them first
    jobs=$(squeue -h -o '%i' 2>/dev/null | tr '\n' ' ') || jobs=""
    if [[ -n ${jobs// /} ]]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      wait_for 20 bash -c '[[ -z $(squeue -h -o %i 2>/dev/null) ]]' || say "jobs still queued: $jobs"
    fi
  fi
  for name in slurmrestd-local:slurmrestd slurmrestd-jwt:slurmrestd slurmd:slurmd slurmctld:slurmctld munged:munged; do
    comm=${name#*:}
    name=${name%%:*}
    if alive "$name" "$comm"; then
      pid=$(cat "$run/$name.pid")
      kill "$pid"
      pids+=("$pid")
    fi
  done
  for pid in "${pids[@]}"; do
    wait_for 10 gone "$pid" || say "pid $pid did not exit"
  done
  rm -f "$run/slurmrestd-local.pid" "$run/slurmrestd-jwt.pid" "$run/munged.pid"
  say "stopped ${#pids[@]} processes${pids[*]:+: ${pids[*]}}"
}

do_status() {
  local name comm pid
  for name in munged:munged slurmctld:slurmctld slurmd:slurmd slurmrestd-local:slurmrestd slurmrestd-jwt:slurmrestd; do
    comm=${name#*:}
    name=${name%%:*}
    pid=$(cat "$run/$name.pid" 2>/dev/null || echo -)
    if alive "$name" "$comm"; then echo "$name $pid alive"; else echo "$name $pid not running"; fi
  done
  sinfo 2>&1 || true
}

case $action in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  env) cat "$dir/env" ;;
  *) echo "usage: $0 [start|stop|status|env]" >&2; exit 2 ;;
esac
