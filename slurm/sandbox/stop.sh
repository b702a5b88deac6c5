#!/usr/bin/env bash
# Stop the sandbox cluster that start.sh started: cancel its jobs first (so no slurmstepd is left behind),
# then stop only our daemons, found by the pidfiles under $SP_ROOT/run; with SLURM_NODES=N >= 2, then remove
# the namespaces, veths and bridge it made (the bridge's alias names their owner). State and logs stay.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
NODES=${SLURM_NODES:-1}
if [ "$NODES" = 1 ]; then SP_ROOT=${SP_ROOT:-$REPO/.slurm-sandbox}; else SP_ROOT=${SP_ROOT:-$REPO/.slurm-sandbox-${NODES}nodes}; fi
PREFIX=${SLURM_NET_PREFIX:-kunsb}
RUN=$SP_ROOT/run
export SLURM_CONF=$SP_ROOT/etc/slurm.conf
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin ;; esac
[ -d "$RUN" ] || { echo "stop: nothing to stop ($RUN does not exist)"; exit 0; }

exec 9>"$SP_ROOT/.lock"
flock -w 240 9 || { echo "stop: another start.sh/stop.sh holds $SP_ROOT/.lock" >&2; exit 1; }

# proc_alive PID COMM: live (not zombie) process named COMM. PID 1 here reaps zombies late (a killed daemon
# lingers as <defunct> for 1-2 s), and daemons delete their own pidfile on TERM: wait on /proc, not the pidfile.
proc_alive() {
  local st
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] || return 1
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
pid_alive() { local pid; pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && proc_alive "$pid" "$2"; }

if pid_alive "$RUN/slurmctld.pid" slurmctld; then
  jobs=$(squeue -h -o %A 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    echo "stop: cancelling jobs: $(echo $jobs)"
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 75); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

for f in "$RUN"/slurmd.pid "$RUN"/slurmd-*.pid "$RUN"/{slurmctld,slurmdbd,mariadbd,munged}.pid; do
  d=$(basename "$f" .pid); d=${d%%-*}
  # munge is the machine's: another sandbox (SLURM_NODES, SP_ROOT) may run on the munged we started
  if [ "$d" = munged ] && pgrep -x 'slurmctld|slurmd|slurmdbd' >/dev/null; then
    pid_alive "$f" munged && echo "stop: munged ($(cat "$f")) left running: other Slurm daemons here use it"
    continue
  fi
  if pid_alive "$f" "$d"; then
    p=$(cat "$f"); t=$SECONDS
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 1 150); do proc_alive "$p" "$d" || break; sleep 0.1; done
    if proc_alive "$p" "$d"; then echo "stop: $d ($p) ignored TERM, sending KILL"; kill -KILL "$p" 2>/dev/null; fi
    for _ in $(seq 1 50); do proc_alive "$p" "$d" || break; sleep 0.1; done
    echo "stop: stopped $d ($p) in ~$(( SECONDS - t ))s"
  fi
  rm -f "$f"
done

# the hosts' namespaces (N >= 2): whatever still runs there ends with them, as on a node that is switched off
BR=${PREFIX}0
if ip link show "$BR" >/dev/null 2>&1 && [ "$(ip -o link show "$BR" | sed -n 's/.* alias //p')" = "kun-sandbox:$SP_ROOT" ]; then
  for ns in $(ip netns list | awk '{print $1}' | grep -x "$PREFIX-\(head\|node[0-9]*\)"); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
    ip link del "$ns" 2>/dev/null
    ip netns del "$ns" && rm -rf "/etc/netns/${ns:?}"
  done
  ip link del "$BR" && echo "stop: removed bridge $BR and its namespaces"
fi
