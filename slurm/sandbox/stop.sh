#!/usr/bin/env bash
# Stop the sandbox cluster that start.sh started: cancel its jobs first (so no slurmstepd is left behind),
# then stop only our daemons, found by the pidfiles under $SP_ROOT/run; with SLURM_NODES=N >= 2, then remove
# the namespaces, veths, hosts files and bridge it made (found by the bridge's alias, which names the SP_ROOT
# that owns it, whatever SLURM_NET_PREFIX says now). State and logs stay under $SP_ROOT.
set -uo pipefail
say() { echo "stop: $*"; }
die() { echo "stop: ERROR: $*" >&2; exit 1; }
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # NODES, SP_ROOT, RUN, OWNER, stop_ours, our_bridge, ...
[ -d "$RUN" ] || { say "nothing to stop ($RUN does not exist)"; exit 0; }

exec 9>"$SP_ROOT/.lock"
flock -w 240 9 || die "another start.sh/stop.sh holds $SP_ROOT/.lock"

if pid_alive "$RUN/slurmctld.pid" slurmctld; then
  jobs=$(squeue -h -o %A 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    say "cancelling jobs: $(echo $jobs)"
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 75); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

for f in "$RUN"/slurmd.pid "$RUN"/slurmd-*.pid "$RUN"/{slurmctld,slurmdbd,mariadbd,munged}.pid; do
  d=$(basename "$f" .pid); d=${d%%-*}
  # munge is the machine's: another sandbox (SLURM_NODES, SP_ROOT) may run on the munged we started
  if [ "$d" = munged ] && pgrep -x 'slurmctld|slurmd|slurmdbd' >/dev/null; then
    pid_alive "$f" munged && say "munged ($(cat "$f")) left running: other Slurm daemons here use it"
    continue
  fi
  stop_ours "$d" "$f"
done

# the hosts (N >= 2): whatever still runs there ends with them, as on a node that is switched off
br=$(our_bridge)
if [ -n "$br" ]; then
  exec 8>"$(net_lock "${br%0}")"
  flock -w 240 8 || die "another sandbox's start.sh/stop.sh on bridge $br holds $(net_lock "${br%0}")"
  for ns in $(host_namespaces "${br%0}"); do remove_host "$ns"; done
  ip link del "$br" && say "removed bridge $br and its hosts' namespaces"
fi
