#!/usr/bin/env bash
# Bring up a real single-node Slurm cluster on this machine: munged, [MariaDB + slurmdbd,] slurmctld, slurmd.
# Debian 12, as root, no systemd needed. Idempotent: daemons already running from our pidfiles are left alone,
# so a second call only re-checks (~0.1 s). When the generated config changes (say MaxArraySize), only our
# slurm daemons are restarted. Missing Debian packages are installed with apt-get.
#
# Env knobs (all optional):
#   SP_ROOT=<repo>/.slurm-sandbox   config, state, logs, pidfiles (default from this script's location)
#   SLURM_ACCOUNTING=1              1: MariaDB + slurmdbd so that `sacct` works; 0: no accounting
#   SLURM_NODE_CPUS=8               CPUs the node advertises (oversubscribed via SlurmdParameters=config_overrides)
#   SLURM_MAX_ARRAY_SIZE=1001       MaxArraySize in slurm.conf (set it low to exercise array chunking)
#   SLURM_WAIT_S=60                 max seconds to wait for each daemon / for the node to become usable
# Clients need:  export SLURM_CONF=$SP_ROOT/etc/slurm.conf   (or: . slurm/sandbox/env.sh)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SP_ROOT=${SP_ROOT:-$REPO/.slurm-sandbox}
ACCOUNTING=${SLURM_ACCOUNTING:-1}
NODE_CPUS=${SLURM_NODE_CPUS:-8}
MAX_ARRAY=${SLURM_MAX_ARRAY_SIZE:-1001}
WAIT_S=${SLURM_WAIT_S:-60}
ETC=$SP_ROOT/etc RUN=$SP_ROOT/run LOG=$SP_ROOT/log STATE=$SP_ROOT/state
export SLURM_CONF=$ETC/slurm.conf

T0=${EPOCHREALTIME/[.,]/}
say() {
  local dt=$(( ${EPOCHREALTIME/[.,]/} - T0 ))
  printf '[sandbox %d.%02ds] %s\n' $((dt / 1000000)) $((dt % 1000000 / 10000)) "$*"
}
die() {
  say "ERROR: $*" >&2
  for f in "$LOG"/*.log; do [ -s "$f" ] && { echo "--- tail $f" >&2; tail -n 25 "$f" >&2; }; done
  exit 1
}

# proc_alive PID COMM: a live (not zombie) process named COMM. PID 1 here reaps zombies late, so a killed
# daemon can linger as <defunct> with its /proc entry and comm for a second or two: check the state too.
proc_alive() {
  local st
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] || return 1
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
pid_alive() { local pid; pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && proc_alive "$pid" "$2"; }
wait_for() { # wait_for DESCRIPTION COMMAND...
  local desc=$1; shift
  local end=$(( SECONDS + WAIT_S ))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || die "timed out after ${WAIT_S}s waiting for $desc"
    sleep 0.2
  done
}
stop_ours() { # stop_ours NAME: TERM our daemon NAME and wait until it is really gone (not just a zombie)
  local f=$RUN/$1.pid p
  if pid_alive "$f" "$1"; then
    p=$(cat "$f"); kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 150); do proc_alive "$p" "$1" || break; sleep 0.1; done
    proc_alive "$p" "$1" && { say "$1 ($p) ignored TERM, sending KILL"; kill -KILL "$p" 2>/dev/null || true; }
    for _ in $(seq 1 50); do proc_alive "$p" "$1" || break; sleep 0.1; done
  fi
  rm -f "$f"
}
# launch LOGNAME COMMAND...: daemons must not inherit our stdout/stderr (a caller reading our output would
# wait for EOF forever) nor the lock fd 9 (the next start.sh would block on it). Early errors land in the log.
launch() { local name=$1; shift; "$@" </dev/null >>"$LOG/$name.stdout.log" 2>&1 9>&-; }

# ---------------------------------------------------------------- 1. packages
pkgs=(slurmctld slurmd slurm-client munge)
need=(slurmctld slurmd sbatch munged)
if [ "$ACCOUNTING" = 1 ]; then pkgs+=(slurmdbd mariadb-server); need+=(slurmdbd mariadbd sacct); fi
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin ;; esac
missing=()
for c in "${need[@]}"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "need root to install ${pkgs[*]} (missing: ${missing[*]})"
  say "installing ${pkgs[*]} (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null || die "apt-get install failed"
  say "packages installed"
fi

mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/ctld" "$STATE/d"
# one start/stop at a time (tests may call us while `make sandbox` runs)
exec 9>"$SP_ROOT/.lock"
flock -w $(( WAIT_S * 4 )) 9 || die "another start.sh/stop.sh holds $SP_ROOT/.lock"

# ---------------------------------------------------------------- 2. config
if [ ! -s "$STATE/realmem" ]; then   # slurmd -C costs ~0.1 s: measure once
  mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  [ -n "$mem" ] || die "slurmd -C did not report RealMemory"
  echo $(( mem * 95 / 100 )) > "$STATE/realmem"   # headroom: never drain for "Low RealMemory"
fi
MEM=$(cat "$STATE/realmem")
if [ "$ACCOUNTING" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi

new_conf=$(cat <<EOF
# generated by slurm/sandbox/start.sh - edits are overwritten
ClusterName=sandbox
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
$ACCT
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# kill_invalid_depend takes effect only under DependencyParameters on 22.05 (inert in SchedulerParameters)
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1,kill_invalid_depend
DependencyParameters=kill_invalid_depend
MaxArraySize=$MAX_ARRAY
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
InactiveLimit=0
KillWait=5
MinJobAge=300
MaxJobCount=200000
SlurmctldTimeout=30
SlurmdTimeout=60
Waittime=0
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
)
new_dbd=$(cat <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
EOF
)
conf_changed=0 dbd_changed=0
if [ ! -f "$ETC/slurm.conf" ] || [ "$(cat "$ETC/slurm.conf")" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" > "$ETC/slurm.conf.tmp" && mv "$ETC/slurm.conf.tmp" "$ETC/slurm.conf"
  conf_changed=1
fi
if [ ! -f "$ETC/slurmdbd.conf" ] || [ "$(cat "$ETC/slurmdbd.conf")" != "$new_dbd" ]; then
  (umask 077; printf '%s\n' "$new_dbd" > "$ETC/slurmdbd.conf.tmp") && mv "$ETC/slurmdbd.conf.tmp" "$ETC/slurmdbd.conf"
  dbd_changed=1
fi
chmod 600 "$ETC/slurmdbd.conf"   # slurmdbd refuses a readable config
printf 'export SLURM_CONF=%s\n' "$SLURM_CONF" > "$SP_ROOT/env.sh"

# config changed under running daemons: restart only ours (jobs survive: state is saved, slurmstepd lives on)
if [ "$conf_changed" = 1 ]; then
  for d in slurmd slurmctld; do
    pid_alive "$RUN/$d.pid" $d && { say "slurm.conf changed: restarting our $d"; stop_ours $d; }
  done
fi
if [ "$dbd_changed" = 1 ] && pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
  say "slurmdbd.conf changed: restarting our slurmdbd"; stop_ours slurmdbd
fi

started=0
# ---------------------------------------------------------------- 3. munged
munge_ok() { { munge -n </dev/null | unmunge; } >/dev/null 2>&1; }
if pid_alive "$RUN/munged.pid" munged; then
  :
elif munge_ok; then
  say "a munged we did not start answers on the default socket; using it"
else
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 0755 /run/munge
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
  launch munged runuser -u munge -- /usr/sbin/munged || die "munged failed to start"
  wait_for munged munge_ok
  cp /run/munge/munged.pid "$RUN/munged.pid"
  say "munged started (pid $(cat "$RUN/munged.pid"))"; started=1
fi

# ---------------------------------------------------------------- 4. mariadb + slurmdbd
if [ "$ACCOUNTING" = 1 ]; then
  db_ok() { mariadb -uroot -e 'select 1' >/dev/null 2>&1; }
  if pid_alive "$RUN/mariadbd.pid" mariadbd; then
    :
  elif db_ok; then
    say "a MariaDB we did not start answers on /run/mysqld/mysqld.sock; using it"
  else
    if [ ! -d "$SP_ROOT/mysql/mysql" ]; then
      say "initialising MariaDB datadir"
      mariadb-install-db --user=root --datadir="$SP_ROOT/mysql" --auth-root-authentication-method=socket \
        </dev/null > "$LOG/mariadb-install-db.log" 2>&1 9>&- || die "mariadb-install-db failed"
    fi
    mkdir -p /run/mysqld; rm -f "$RUN/mariadbd.pid"
    # mariadbd does not daemonize itself: setsid -f detaches it (a plain `&` child would keep our stdout)
    launch mariadbd setsid -f /usr/sbin/mariadbd --no-defaults --user=root --datadir="$SP_ROOT/mysql" \
      --socket=/run/mysqld/mysqld.sock --pid-file="$RUN/mariadbd.pid" --skip-networking \
      --log-error="$LOG/mariadbd.log" --innodb-buffer-pool-size=64M || die "mariadbd failed to start"
    wait_for mariadbd db_ok
    wait_for "mariadbd pidfile" test -s "$RUN/mariadbd.pid"
    say "mariadbd started (pid $(cat "$RUN/mariadbd.pid"))"; started=1
  fi
  if ! pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
    rm -f "$RUN/slurmdbd.pid"
    launch slurmdbd slurmdbd || die "slurmdbd failed to start"
    wait_for slurmdbd sacctmgr -n show cluster
    say "slurmdbd started (pid $(cat "$RUN/slurmdbd.pid"))"; started=1
  fi
fi

# ---------------------------------------------------------------- 5. slurmctld + slurmd
if ! pid_alive "$RUN/slurmctld.pid" slurmctld; then
  rm -f "$RUN/slurmctld.pid"
  launch slurmctld slurmctld || die "slurmctld failed to start"
  wait_for slurmctld scontrol ping
  say "slurmctld started (pid $(cat "$RUN/slurmctld.pid"))"; started=1
fi
if ! pid_alive "$RUN/slurmd.pid" slurmd; then
  # never start a second slurmd: it kills the running one ("killing old slurmd")
  rm -f "$RUN/slurmd.pid"
  launch slurmd slurmd -N localhost || die "slurmd failed to start"
  wait_for slurmd test -s "$RUN/slurmd.pid"
  say "slurmd started (pid $(cat "$RUN/slurmd.pid"))"; started=1
fi

# ---------------------------------------------------------------- 6. node usable?
end=$(( SECONDS + WAIT_S ))
while :; do
  st=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
  case "$st" in
    idle*|mixed*|allocated*|completing*) break ;;
    down*|drain*|fail*) scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true ;;
  esac
  [ "$SECONDS" -lt "$end" ] || die "node not usable after ${WAIT_S}s (state: '$st')"
  sleep 0.2
done
if [ "$started" = 1 ]; then   # a real job step must run end to end
  timeout "$WAIT_S" srun -Q -t 1 -n 1 true </dev/null 9>&- || die "smoke job (srun true) failed"
  say "cluster ready: node localhost is $st, smoke job ran"
else
  say "cluster already running: node localhost is $st"
fi
echo "export SLURM_CONF=$SLURM_CONF"
