# Source me:  . slurm/sandbox/env.sh   (bash, zsh, or POSIX sh such as dash under make)
# Points the Slurm clients (sbatch, squeue, sacct, submitit) at the sandbox cluster from start.sh: the one-node
# cluster, or with SLURM_NODES=N (N >= 2) set, the N-node one. The path comes from this file's own location, so
# it works from any cwd; $SP_ROOT overrides it.
if [ -n "${BASH_VERSION:-}" ]; then
  eval '_sb_self=${BASH_SOURCE[0]}'
elif [ -n "${ZSH_VERSION:-}" ]; then
  eval '_sb_self=${(%):-%x}'
else
  # POSIX sh cannot name the file being sourced: look for it from $PWD upwards (make runs in the repo root)
  _sb_self=
  _sb_d=$PWD
  while [ -n "$_sb_d" ]; do
    if [ -f "$_sb_d/slurm/sandbox/env.sh" ]; then _sb_self=$_sb_d/slurm/sandbox/env.sh; break; fi
    [ "$_sb_d" = / ] && break
    _sb_d=$(dirname "$_sb_d")
  done
fi
_sb_root=.slurm-sandbox
if [ "${SLURM_NODES:-1}" != 1 ]; then _sb_root=.slurm-sandbox-${SLURM_NODES}nodes; fi
if [ -n "${SP_ROOT:-}" ]; then
  export SLURM_CONF="$SP_ROOT/etc/slurm.conf"
elif [ -n "$_sb_self" ]; then
  export SLURM_CONF="$(cd "$(dirname "$_sb_self")/../.." && pwd)/$_sb_root/etc/slurm.conf"
else
  echo "slurm/sandbox/env.sh: cannot find the repo from $PWD (a POSIX sh cannot tell which file it sources):" \
    "source it from inside the repo, or set SP_ROOT" >&2
fi
unset _sb_self _sb_d _sb_root
