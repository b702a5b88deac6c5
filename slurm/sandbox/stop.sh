#!/usr/bin/env bash
# Stop the sandbox cluster that start.sh started: cancel its jobs first (so no slurmstepd is left behind),
# then stop only our daemons, found by the pidfiles under $SP_ROOT/run. State and logs stay under $SP_ROOT.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SP_ROOT=${SP_ROOT:-$(cd "$HERE/../.." && pwd)/.slurm-sandbox}
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

for d in slurmd slurmctld slurmdbd mariadbd munged; do
  f=$RUN/$d.pid
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
