#!/usr/bin/env bash
# start-prometheus.sh - run a Prometheus 2.42 with the remote-write receiver for aifb's tests.
#
#   scripts/start-prometheus.sh start|stop|status [PORT] [DATA_DIR]
#
# start   Installs the Debian package when missing, writes a minimal config in DATA_DIR, starts
#         prometheus on 127.0.0.1:PORT with --web.enable-remote-write-receiver, records its PID
#         in DATA_DIR/prometheus.pid, waits until /-/ready answers 200, prints the base URL.
# stop    Sends SIGTERM to the recorded PID only, waits for it to exit (SIGKILL after 15 s).
# status  Whether the recorded PID is alive.
#
# Defaults: PORT=${AIFB_PROMETHEUS_PORT:-9090}, DATA_DIR=${AIFB_PROMETHEUS_DIR:-/tmp/aifb-prometheus}.
# AIFB_PROMETHEUS_OOO_WINDOW (e.g. 10m) sets storage.tsdb.out_of_order_time_window.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

action=${1:-start}
port=${2:-${AIFB_PROMETHEUS_PORT:-9090}}
dir=${3:-${AIFB_PROMETHEUS_DIR:-/tmp/aifb-prometheus}}
pidfile=$dir/prometheus.pid

alive() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

ready() {  # ready URL: 0 when GET URL answers 200
  python3 - "$1" <<'PY'
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

case "$action" in
  start)
    if alive; then log "prometheus already running (pid $(cat "$pidfile"))"; exit 0; fi
    command -v prometheus >/dev/null || apt_install prometheus
    mkdir -p "$dir/data"
    {
      echo "global:"
      echo "  scrape_interval: 15s"
      if [ -n "${AIFB_PROMETHEUS_OOO_WINDOW:-}" ]; then
        echo "storage:"
        echo "  tsdb:"
        echo "    out_of_order_time_window: ${AIFB_PROMETHEUS_OOO_WINDOW}"
      fi
    } >"$dir/prometheus.yml"
    prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
      --web.listen-address="127.0.0.1:$port" --web.enable-remote-write-receiver \
      >"$dir/prometheus.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 300); do
      if ready "http://127.0.0.1:$port/-/ready"; then echo "http://127.0.0.1:$port"; exit 0; fi
      if ! alive; then log "prometheus exited; see $dir/prometheus.log"; tail -5 "$dir/prometheus.log" >&2; exit 1; fi
      sleep 0.1
    done
    log "prometheus not ready after 30 s; see $dir/prometheus.log"; exit 1
    ;;
  stop)
    if ! alive; then rm -f "$pidfile"; exit 0; fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; exit 0; }; sleep 0.1; done
    log "prometheus (pid $pid) ignored SIGTERM for 15 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    ;;
  status)
    if alive; then echo "running (pid $(cat "$pidfile"))"; else echo "stopped"; exit 1; fi
    ;;
  *) echo "usage: $0 start|stop|status [PORT] [DATA_DIR]" >&2; exit 2 ;;
esac
