# What start.sh and stop.sh share (sourced by them, not run): the sandbox's settings, checked; liveness of
# our daemons; the hosts' network namespaces. Callers define say() and die() first.

# ---------------------------------------------------------------- settings
# SLURM_NODES, SP_ROOT, SLURM_NET_PREFIX, SLURM_SUBNET (docs/slurm-sandbox.md), checked: a prefix is used in
# interface names (at most 15 characters: <prefix>-node99) and matched against namespace names.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NODES=${SLURM_NODES:-1}
[[ $NODES =~ ^[1-9][0-9]?$ ]] || die "SLURM_NODES must be a number of nodes from 1 to 99, not '$NODES'"
if [ "$NODES" = 1 ]; then SP_ROOT=${SP_ROOT:-$REPO/.slurm-sandbox}; else SP_ROOT=${SP_ROOT:-$REPO/.slurm-sandbox-${NODES}nodes}; fi
SP_ROOT=$(realpath -m -- "$SP_ROOT")   # the bridge's owner is this path: one spelling of it
PREFIX=${SLURM_NET_PREFIX:-kunsb}
[[ $PREFIX =~ ^[a-z][a-z0-9]{0,7}$ ]] \
  || die "SLURM_NET_PREFIX must be 1-8 lowercase letters or digits starting with a letter, not '$PREFIX'"
SUBNET=${SLURM_SUBNET:-10.213.0}
[[ $SUBNET =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] && (( BASH_REMATCH[1] <= 255 &&
  BASH_REMATCH[2] <= 255 && BASH_REMATCH[3] <= 255 )) \
  || die "SLURM_SUBNET must be the first three numbers of a private /24 such as 10.213.0, not '$SUBNET'"
RUN=$SP_ROOT/run
OWNER="kun-sandbox:$SP_ROOT"   # the alias of the bridge this sandbox made
net_lock() { echo "/run/kun-sandbox-$1.lock"; }   # net_lock PREFIX: held while a start/stop works on it
NET_LOCK=$(net_lock "$PREFIX")
export SLURM_CONF=$SP_ROOT/etc/slurm.conf
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin ;; esac

# ---------------------------------------------------------------- our daemons
# proc_alive PID COMM: a live (not zombie) process named COMM. PID 1 here reaps zombies late, so a killed
# daemon can linger as <defunct> with its /proc entry and comm for a second or two: check the state too.
proc_alive() {
  local st
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] || return 1
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
pid_alive() { local pid; pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && proc_alive "$pid" "$2"; }
# stop_ours NAME [PIDFILE]: TERM our daemon NAME and wait until it is really gone (not a zombie); daemons
# delete their pidfile on TERM, so wait on /proc, not on the pidfile
stop_ours() {
  local f=${2:-$RUN/$1.pid} p t=$SECONDS
  if pid_alive "$f" "$1"; then
    p=$(cat "$f"); kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 150); do proc_alive "$p" "$1" || break; sleep 0.1; done
    if proc_alive "$p" "$1"; then say "$1 ($p) ignored TERM, sending KILL"; kill -KILL "$p" 2>/dev/null || true; fi
    for _ in $(seq 1 50); do proc_alive "$p" "$1" || break; sleep 0.1; done
    say "stopped $1 ($p) in ~$(( SECONDS - t ))s"
  fi
  rm -f "$f"
}

# ---------------------------------------------------------------- hosts (N >= 2)
# our_bridge: the bridge whose alias names this sandbox (whatever SLURM_NET_PREFIX says now), or nothing
our_bridge() {
  local br
  for br in $(ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}'); do
    [ "$(ip -o link show "$br" | sed -n 's/.* alias //p')" = "$OWNER" ] && { echo "$br"; return; }
  done
  return 0
}
# host_namespaces PREFIX: our hosts' namespaces (<prefix>-head, <prefix>-node<k>), names compared as text
host_namespaces() {
  local ns rest
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    [ "$ns" = "$1-head" ] && { echo "$ns"; continue; }
    rest=${ns#"$1"-node}
    [ "$rest" != "$ns" ] && [[ $rest =~ ^[0-9]+$ ]] && echo "$ns"
  done
  return 0
}
# remove_host NS: end what runs on the host (as when a machine is switched off), then remove it
remove_host() {
  ip netns pids "$1" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  ip link del "$1" 2>/dev/null || true   # the veth's end here carries the namespace's name
  ip netns del "$1" 2>/dev/null || true
  rm -rf "/etc/netns/${1:?}"
}
