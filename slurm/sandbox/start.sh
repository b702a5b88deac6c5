#!/usr/bin/env bash
# Bring up a real Slurm cluster on this machine: munged, [MariaDB + slurmdbd,] slurmctld and slurmd.
# One node (default): `localhost`, every daemon here. SLURM_NODES=N (N >= 2): nodes node1..nodeN, each slurmd
# in its own network and UTS namespace (its own hostname and address on a bridge this script creates), and the
# controller host `head` (slurmctld, slurmdbd, MariaDB) in another; all share munge and the filesystem, as a
# real cluster shares its parallel filesystem (docs/slurm-sandbox.md). Debian 12, as root, no systemd needed.
#
# Idempotent: daemons already running from our pidfiles are left alone, so a second call only re-checks
# (~0.1 s). When the generated config changes (say MaxArraySize), only our slurm daemons are restarted.
# Missing Debian packages are installed with apt-get.
#
# Env knobs (all optional):
#   SLURM_NODES=1                   nodes; N >= 2: the namespace layout above
#   SP_ROOT=<repo>/.slurm-sandbox   config, state, logs, pidfiles; <repo>/.slurm-sandbox-<N>nodes for N >= 2
#   SLURM_ACCOUNTING=1              1: MariaDB + slurmdbd so that `sacct` works; 0: no accounting
#   SLURM_NODE_CPUS=8               CPUs each node advertises (oversubscribed via SlurmdParameters=config_overrides)
#   SLURM_MAX_ARRAY_SIZE=1001       MaxArraySize in slurm.conf (set it low to exercise array chunking)
#   SLURM_WAIT_S=60                 max seconds to wait for each daemon / for the nodes to become usable
#   SLURM_SUBNET=10.213.0           N >= 2: the private /24 the sandbox owns (bridge .1, head .2, nodeK .(10+K))
#   SLURM_NET_PREFIX=kunsb          N >= 2: bridge <prefix>0, namespaces and veths <prefix>-<host>
# Clients need:  export SLURM_CONF=$SP_ROOT/etc/slurm.conf   (or: . slurm/sandbox/env.sh)
set -euo pipefail

T0=${EPOCHREALTIME/[.,]/}
say() {
  local dt=$(( ${EPOCHREALTIME/[.,]/} - T0 ))
  printf '[sandbox %d.%02ds] %s\n' $((dt / 1000000)) $((dt % 1000000 / 10000)) "$*"
}
die() {
  say "ERROR: $*" >&2
  for f in "${LOG:-/nonexistent}"/*.log; do [ -s "$f" ] && { echo "--- tail $f" >&2; tail -n 25 "$f" >&2; }; done
  exit 1
}
# a command that fails where no check expected it stops the script (set -e): say which, not nothing
set -E
trap 'rc=$?; [ "$BASH_SUBSHELL" = 0 ] && say "ERROR: line $LINENO: \`$BASH_COMMAND\` failed (exit $rc)" >&2' ERR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # NODES, SP_ROOT, PREFIX, SUBNET (checked), proc_alive, stop_ours, ...
ACCOUNTING=${SLURM_ACCOUNTING:-1}
NODE_CPUS=${SLURM_NODE_CPUS:-8}
MAX_ARRAY=${SLURM_MAX_ARRAY_SIZE:-1001}
WAIT_S=${SLURM_WAIT_S:-60}
ETC=$SP_ROOT/etc LOG=$SP_ROOT/log STATE=$SP_ROOT/state

wait_for() { # wait_for DESCRIPTION COMMAND...
  local desc=$1; shift
  local end=$(( SECONDS + WAIT_S ))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || die "timed out after ${WAIT_S}s waiting for $desc"
    sleep 0.2
  done
}
# launch LOGNAME COMMAND...: daemons must not inherit our stdout/stderr (a caller reading our output would
# wait for EOF forever) nor the lock fd 9 (the next start.sh would block on it). Early errors land in the log.
launch() { local name=$1; shift; "$@" </dev/null >>"$LOG/$name.stdout.log" 2>&1 8>&- 9>&-; }

# ---------------------------------------------------------------- 1. packages
pkgs=(slurmctld slurmd slurm-client munge)
need=(slurmctld slurmd sbatch munged)
if [ "$NODES" -gt 1 ]; then pkgs+=(iproute2); need+=(ip); fi
if [ "$ACCOUNTING" = 1 ]; then pkgs+=(slurmdbd mariadb-server); need+=(slurmdbd mariadbd sacct); fi
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
if [ "$NODES" -gt 1 ]; then
  # and one per network name, whatever the SP_ROOT or checkout (/run is the machine's, as the namespaces in
  # /run/netns are): a sandbox still starting runs nothing on its hosts yet, and must not look left behind
  exec 8>"$NET_LOCK"
  flock -w $(( WAIT_S * 4 )) 8 || die "another sandbox's start.sh/stop.sh on bridge ${PREFIX}0 holds $NET_LOCK"
fi

# ---------------------------------------------------------------- 2. hosts and network
# One node: the node `localhost` and the controller are this machine. N >= 2: the hosts `head` and
# node1..nodeN are network namespaces <prefix>-<host>, each with eth0 on the bridge <prefix>0 and a loopback of
# its own; every daemon also gets a UTS namespace named after its host. The bridge holds this machine's address
# .1 and no route leads further (no forwarding, no NAT): traffic stays between the namespaces and this machine.
# /etc/netns/<ns>/hosts names every host of the sandbox (bound over /etc/hosts there, as `ip netns exec` would),
# as a cluster's DNS would: torch's rendezvous on node2 reaches node1 by name.
BR=${PREFIX}0
if [ "$NODES" = 1 ]; then
  nodes=(localhost) hosts=() addrs=()
else
  nodes=() hosts=(head) addrs=("$SUBNET.2")
  for k in $(seq 1 "$NODES"); do nodes+=("node$k"); hosts+=("node$k"); addrs+=("$SUBNET.$((10 + k))"); done
fi
# host_argv HOST: the command prefix that runs a command as on HOST: in HOST's network namespace, with a UTS
# namespace named HOST and a mount namespace whose /etc/hosts is the sandbox's. Not `ip netns exec`: it mounts
# a fresh /sys, without the cgroup tree slurmd needs.
host_argv() {
  argv=(nsenter "--net=/run/netns/$PREFIX-$1" unshare --uts --mount --propagation slave --
    sh -c 'mount --bind "$1" /etc/hosts && hostname "$0" && shift && exec "$@"' "$1" "/etc/netns/$PREFIX-$1/hosts")
}
in_host() { local argv; host_argv "$1"; shift; "${argv[@]}" "$@"; }
# where the controller's daemons run: here, or as on head
HEAD=()
if [ "$NODES" -gt 1 ]; then host_argv head; HEAD=("${argv[@]}"); fi
# the pidfile of NODE's slurmd (slurm.conf's SlurmdPidFile)
slurmd_pidfile() { if [ "$NODES" = 1 ]; then echo "$RUN/slurmd.pid"; else echo "$RUN/slurmd-$1.pid"; fi; }

net_up() {
  local i ns h mine owner busy
  mine=$(our_bridge)
  if [ -n "$mine" ] && [ "$mine" != "$BR" ]; then
    die "this sandbox runs on bridge $mine (SLURM_NET_PREFIX=${mine%0}); stop it (stop.sh) before changing SLURM_NET_PREFIX"
  fi
  owner=$(ip -o link show "$BR" 2>/dev/null | sed -n 's/.* alias //p' || true)
  if ip link show "$BR" >/dev/null 2>&1 && [ "$owner" != "$OWNER" ]; then
    # another sandbox's network (another SP_ROOT, another checkout): taken over only when nothing runs on its
    # hosts, as a killed test run or a CI job that ended without stop.sh leaves it
    busy=$(for ns in $(host_namespaces "$PREFIX"); do ip netns pids "$ns" 2>/dev/null; done | wc -l)
    if [ "${owner#kun-sandbox:}" = "$owner" ] || [ "$busy" -gt 0 ]; then
      die "bridge $BR exists and is not this sandbox's (alias '$owner'; $busy processes run on its hosts): \
set SLURM_NET_PREFIX and SLURM_SUBNET"
    fi
    for ns in $(host_namespaces "$PREFIX"); do remove_host "$ns"; done
    ip link del "$BR"
    say "network: bridge $BR of ${owner#kun-sandbox:} was left behind (nothing runs on its hosts): removed it"
  fi
  if ip link show "$BR" >/dev/null 2>&1; then
    ip -4 -o addr show dev "$BR" | grep -q " $SUBNET\.1/24 " || die "this sandbox's bridge $BR is on \
$(ip -4 -o addr show dev "$BR" | awk '{print $4}' | head -1), not $SUBNET.0/24: stop it (stop.sh) before changing SLURM_SUBNET"
  else
    if ip -4 -o addr show | awk '{print $4}' | grep -q "^${SUBNET//./\\.}\."; then
      die "an interface already holds an address in $SUBNET.0/24: set SLURM_SUBNET to a free private /24"
    fi
    ip link add "$BR" type bridge || die "cannot create bridge $BR (needs root with CAP_NET_ADMIN)"
    ip link set "$BR" alias "$OWNER"
    ip addr add "$SUBNET.1/24" dev "$BR" || die "cannot give bridge $BR the address $SUBNET.1/24"
    say "network: bridge $BR, $SUBNET.1/24"
  fi
  ip link set "$BR" up
  for i in "${!hosts[@]}"; do
    ns=$PREFIX-${hosts[$i]}
    [ -e "/run/netns/$ns" ] || ip netns add "$ns" || die "cannot create network namespace $ns"
    if ! ip link show "$ns" >/dev/null 2>&1; then   # the veth's end here carries the namespace's name
      ip link add "$ns" type veth peer name eth0 netns "$ns" || die "cannot create veth $ns"
      ip link set "$ns" master "$BR" up
      ip -n "$ns" addr add "${addrs[$i]}/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
    fi
    mkdir -p "/etc/netns/$ns"
    { echo "127.0.0.1 localhost"; for j in "${!hosts[@]}"; do echo "${addrs[$j]} ${hosts[$j]}"; done; } \
      > "/etc/netns/$ns/hosts"
  done
  # nodes a smaller SLURM_NODES no longer names: stop their slurmd, end what ran there, drop the host
  for ns in $(host_namespaces "$PREFIX"); do
    h=${ns#"$PREFIX"-}
    [ "$h" = head ] || [ "${h#node}" -le "$NODES" ] && continue
    stop_ours slurmd "$RUN/slurmd-$h.pid"
    remove_host "$ns"
    say "network: removed $h (SLURM_NODES=$NODES)"
  done
}
if [ "$NODES" -gt 1 ]; then net_up; fi

# ---------------------------------------------------------------- 3. config
if [ ! -s "$STATE/realmem" ]; then   # slurmd -C costs ~0.1 s: measure once
  mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  [ -n "$mem" ] || die "slurmd -C did not report RealMemory"
  echo $(( mem * 95 / 100 )) > "$STATE/realmem"   # headroom: never drain for "Low RealMemory"
fi
MEM=$(cat "$STATE/realmem")
if [ "$NODES" = 1 ]; then
  CLUSTER=sandbox CTLD_HOST=localhost DBD_HOST=localhost DBD_ADDR=localhost PARTITION_NODES=localhost
  NODE_CONF="SlurmdPidFile=$RUN/slurmd.pid
SlurmdSpoolDir=$STATE/d
SlurmdLogFile=$LOG/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$MEM State=UNKNOWN"
  STORAGE="StorageHost=localhost
StorageUser=root"
else
  # head's address in parentheses: clients here and on the nodes reach slurmctld and slurmdbd there.
  # %n: each slurmd's pidfile, spool and log carry its node name (all nodes share this filesystem).
  CLUSTER=sandbox${NODES}n CTLD_HOST="head($SUBNET.2)" DBD_HOST=head DBD_ADDR=$SUBNET.2
  PARTITION_NODES="node[1-$NODES]"
  NODE_CONF="SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmdSpoolDir=$STATE/d/%n
SlurmdLogFile=$LOG/slurmd-%n.log"
  for k in $(seq 1 "$NODES"); do
    NODE_CONF+="
NodeName=node$k NodeHostname=node$k NodeAddr=$SUBNET.$((10 + k)) CPUs=$NODE_CPUS RealMemory=$MEM State=UNKNOWN"
  done
  # MariaDB listens on head's own loopback; socket authentication does not cross TCP, hence a user
  STORAGE="StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=sandbox"
fi
if [ "$ACCOUNTING" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$DBD_ADDR
AccountingStoragePort=6819"
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi

new_conf=$(cat <<EOF
# generated by slurm/sandbox/start.sh - edits are overwritten
ClusterName=$CLUSTER
SlurmctldHost=$CTLD_HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/ctld
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmctldLogFile=$LOG/slurmctld.log
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
$NODE_CONF
PartitionName=debug Nodes=$PARTITION_NODES Default=YES MaxTime=INFINITE State=UP
EOF
)
new_dbd=$(cat <<EOF
AuthType=auth/munge
DbdHost=$DBD_HOST
DbdAddr=$DBD_ADDR
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
$STORAGE
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
  for n in "${nodes[@]}"; do
    f=$(slurmd_pidfile "$n")
    if pid_alive "$f" slurmd; then say "slurm.conf changed: restarting our slurmd of $n"; stop_ours slurmd "$f"; fi
  done
  if pid_alive "$RUN/slurmctld.pid" slurmctld; then
    say "slurm.conf changed: restarting our slurmctld"; stop_ours slurmctld
  fi
fi
if [ "$dbd_changed" = 1 ] && pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
  say "slurmdbd.conf changed: restarting our slurmdbd"; stop_ours slurmdbd
fi

started=0
# ---------------------------------------------------------------- 4. munged
munge_ok() { { munge -n </dev/null | unmunge; } >/dev/null 2>&1; }
if pid_alive "$RUN/munged.pid" munged; then
  :
elif munge_ok; then
  rm -f "$RUN/munged.pid"   # names a munged of ours that is gone: this one is not ours to stop
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

# ---------------------------------------------------------------- 5. mariadb + slurmdbd
if [ "$ACCOUNTING" = 1 ]; then
  if [ "$NODES" = 1 ]; then
    DB_SOCK=/run/mysqld/mysqld.sock DB_NET=(--skip-networking)
  else  # head's own server: its socket here (for this script), TCP on head's loopback (for slurmdbd)
    DB_SOCK=$RUN/mysqld.sock DB_NET=(--bind-address=127.0.0.1 --port=3306 --skip-name-resolve)
  fi
  db_ok() { mariadb --socket="$DB_SOCK" -uroot -e 'select 1' >/dev/null 2>&1; }
  if pid_alive "$RUN/mariadbd.pid" mariadbd; then
    :
  elif [ "$NODES" = 1 ] && db_ok; then
    rm -f "$RUN/mariadbd.pid"
    say "a MariaDB we did not start answers on $DB_SOCK; using it"
  else
    if [ ! -d "$SP_ROOT/mysql/mysql" ]; then
      say "initialising MariaDB datadir"
      mariadb-install-db --user=root --datadir="$SP_ROOT/mysql" --auth-root-authentication-method=socket \
        </dev/null > "$LOG/mariadb-install-db.log" 2>&1 8>&- 9>&- || die "mariadb-install-db failed"
    fi
    mkdir -p "$(dirname "$DB_SOCK")"; rm -f "$RUN/mariadbd.pid"
    # mariadbd does not daemonize itself: setsid -f detaches it (a plain `&` child would keep our stdout)
    launch mariadbd setsid -f "${HEAD[@]}" /usr/sbin/mariadbd --no-defaults --user=root --datadir="$SP_ROOT/mysql" --socket="$DB_SOCK" \
      --pid-file="$RUN/mariadbd.pid" "${DB_NET[@]}" --log-error="$LOG/mariadbd.log" \
      --innodb-buffer-pool-size=64M || die "mariadbd failed to start"
    wait_for mariadbd db_ok
    wait_for "mariadbd pidfile" test -s "$RUN/mariadbd.pid"
    if [ "$NODES" -gt 1 ]; then
      mariadb --socket="$DB_SOCK" -uroot -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'sandbox';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'" || die "cannot create the MariaDB user slurm"
    fi
    say "mariadbd started (pid $(cat "$RUN/mariadbd.pid"))"; started=1
  fi
  if ! pid_alive "$RUN/slurmdbd.pid" slurmdbd; then
    rm -f "$RUN/slurmdbd.pid"
    launch slurmdbd "${HEAD[@]}" slurmdbd || die "slurmdbd failed to start"
    wait_for slurmdbd sacctmgr -n show cluster
    say "slurmdbd started (pid $(cat "$RUN/slurmdbd.pid"))"; started=1
  fi
fi

# ---------------------------------------------------------------- 6. slurmctld + slurmd
if ! pid_alive "$RUN/slurmctld.pid" slurmctld; then
  rm -f "$RUN/slurmctld.pid"
  launch slurmctld "${HEAD[@]}" slurmctld || die "slurmctld failed to start"
  wait_for slurmctld scontrol ping
  say "slurmctld started (pid $(cat "$RUN/slurmctld.pid"))"; started=1
fi
declare -A restarted=()
for n in "${nodes[@]}"; do
  f=$(slurmd_pidfile "$n")
  # never start a second slurmd for a node: it kills the running one ("killing old slurmd")
  pid_alive "$f" slurmd && continue
  rm -f "$f" && restarted[$n]=1
  if [ "$NODES" = 1 ]; then
    launch slurmd slurmd -N localhost || die "slurmd failed to start"
  else
    mkdir -p "$STATE/d/$n"
    launch "slurmd-$n" in_host "$n" slurmd -N "$n" || die "slurmd of $n failed to start"
  fi
  wait_for "slurmd of $n" test -s "$f"
  say "slurmd of $n started (pid $(cat "$f"))"; started=1
done

# ---------------------------------------------------------------- 7. nodes usable?
# A node we (re)started a slurmd for and that is DOWN comes back (RESUME). A node an operator or a test
# drained or set DOWN while its slurmd answers is left so, and said: undoing a drain is not ours to do.
end=$(( SECONDS + WAIT_S ))
while :; do
  ready=0 states=() idle=() left=()
  for n in "${nodes[@]}"; do
    st=$(sinfo -h -n "$n" -o %T 2>/dev/null || true)
    states+=("$n ${st:-?}")
    case "$st" in
      idle) ready=$((ready + 1)); idle+=("$n") ;;
      idle*|mixed*|allocated*|completing*) ready=$((ready + 1)) ;;
      down*|drain*|fail*)
        if [ -n "${restarted[$n]:-}" ]; then
          scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true
        elif [[ $st != *'*' ]]; then   # '*': not responding yet; otherwise its own state
          ready=$((ready + 1)); left+=("$n $st")
        fi ;;
    esac
  done
  [ "$ready" = "${#nodes[@]}" ] && break
  [ "$SECONDS" -lt "$end" ] || die "nodes not usable after ${WAIT_S}s (${states[*]})"
  sleep 0.2
done
if [ ${#left[@]} -gt 0 ]; then
  say "left as they are: $(IFS=,; echo "${left[*]}") (scontrol update NodeName=... State=RESUME brings one back)"
fi
if [ "$started" = 1 ] && [ ${#idle[@]} -gt 0 ]; then   # a real job step must run end to end, on each idle node
  timeout "$WAIT_S" srun -Q -t 1 -w "$(IFS=,; echo "${idle[*]}")" -N "${#idle[@]}" -n "${#idle[@]}" true \
    </dev/null 8>&- 9>&- || die "smoke job (srun true on ${idle[*]}) failed"
  say "cluster ready ($(IFS=,; echo "${states[*]}")), smoke job ran on ${idle[*]}"
elif [ "$started" = 1 ]; then
  say "cluster ready ($(IFS=,; echo "${states[*]}")); no idle node for a smoke job"
else
  say "cluster already running ($(IFS=,; echo "${states[*]}"))"
fi
echo "export SLURM_CONF=$SLURM_CONF"
