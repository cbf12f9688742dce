#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the SLURM tests (tests/test_slurm.py) and for trying
# `sweep.py run --executor slurm` without a cluster. Debian's packages (slurmctld, slurmd, slurm-client,
# munge); as root; no systemd needed (the daemons are started directly, as on a CI machine or container).
#
#   sudo bash tools/slurm_cluster.sh          # bring it up (idempotent: when it is up, only checks it)
#   sudo bash tools/slurm_cluster.sh stop     # stop slurmd, slurmctld and munged (packages stay)
#
# Up means: munge round-trips a credential, `sinfo` shows the node idle in partition `debug` (the
# default), and a trivial `sbatch --wait` job runs and writes its output. The last line says how long it
# took. The node is this host with the CPUs and memory `slurmd -C` finds; no GPUs (no gres).
set -euo pipefail

PARTITION=${SLURM_PARTITION:-debug}
CONF=/etc/slurm/slurm.conf
LOG=/var/log/slurm
t0=$(date +%s.%N)
say() { echo "slurm_cluster: $*"; }
die() { echo "slurm_cluster: error: $*" >&2; exit 1; }
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }   # a pid file whose process is alive

stop_daemons() {
    # By pid file, not by name: only the daemons this script started (or the packages' own pid files).
    local f pid
    for f in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
        if alive "$f"; then
            pid=$(cat "$f"); kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$f"
    done
}

if [ "${1:-}" = stop ]; then
    stop_daemons; say "stopped in $(elapsed) s"; exit 0
fi
[ -z "${1:-}" ] || die "unknown argument '$1' (expected nothing or 'stop')"

# --- packages: apt only when one is missing (one `apt-get update`, then install) ----------------------
PKGS=(slurmctld slurmd slurm-client munge)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} ..."
    # Keep the packages' postinst from starting daemons (they would start before our slurm.conf exists,
    # and without systemd their init scripts misbehave); a container usually has this file already.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
    [ "$own_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
    say "packages installed ($(elapsed) s)"
fi

# --- munge: a key, then munged as the munge user ------------------------------------------------------
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --force --keyfile /etc/munge/munge.key
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
if ! alive /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || die "munge does not round-trip a credential (see /var/log/munge/munged.log)"

# --- slurm.conf from what this host has ----------------------------------------------------------------
host=$(hostname -s)
# `slurmd -C` prints this node's line as slurmd itself sees it (CPUs, sockets, cores, threads,
# RealMemory); a node configured with more than that is drained by slurmctld, so we use it verbatim.
node=$(slurmd -C | head -n 1)
case "$node" in NodeName=*) ;; *) die "slurmd -C printed no NodeName line: $node" ;; esac
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG"
want=$(cat <<EOF
# Written by tools/slurm_cluster.sh: a one-node cluster on $host (edits are overwritten).
ClusterName=premem
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
# root runs both daemons: nothing to chown, and the tests submit as root anyway.
SlurmUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# No cgroups: a container or microVM may not let slurmd create its cgroup tree, so processes are tracked
# through /proc and tasks are not bound to CPUs. Jobs still get their CPU and memory share scheduled.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: sacct does not work; a finished job stays visible to squeue/scontrol for MinJobAge s.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Cores and memory are consumable, so several 1-CPU jobs share the node (select/linear would give each
# job the whole node); a job that asks for no memory gets its CPUs' share, not all of it.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=0
if [ "$(cat "$CONF" 2>/dev/null)" != "$want" ]; then
    printf '%s\n' "$want" > "$CONF"; changed=1
    say "wrote $CONF: node $host, $cpus CPUs, $mem MB, partition $PARTITION"
fi

# --- daemons ----------------------------------------------------------------------------------------------
if [ "$changed" = 1 ] && { alive /run/slurmctld.pid || alive /run/slurmd.pid; }; then
    say "configuration changed: restarting slurmctld and slurmd"
    for f in /run/slurmd.pid /run/slurmctld.pid; do
        if alive "$f"; then pid=$(cat "$f"); kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done; fi
    done
fi
started=0
alive /run/slurmctld.pid || { slurmctld; started=1; }
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.2; done
scontrol ping | grep -q "is UP" || die "slurmctld is not answering (see $LOG/slurmctld.log)"
alive /run/slurmd.pid || { slurmd; started=1; }

# The node must come up idle; one left down or drained by an earlier run is resumed.
state=""
for i in $(seq 150); do
    state=$(sinfo -h -N -n "$host" -o %T 2>/dev/null | head -n 1)
    case "$state" in
        idle|mixed|allocated) break ;;
        down*|drain*|fail*) [ "$i" -gt 5 ] && scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.2
done
case "$state" in idle|mixed|allocated) ;; *)
    die "node $host is '$state', not idle: $(sinfo -h -N -o '%N %T %E'); see $LOG/slurmd.log" ;;
esac

# --- a trivial job, end to end ---------------------------------------------------------------------------
out=$(mktemp /tmp/slurm_cluster_check.XXXXXX)
# sbatch --wait polls with a growing interval (seconds); polling squeue ourselves ends sooner.
job=$(sbatch --parsable -p "$PARTITION" -t 1 -o "$out" --wrap 'echo ok-$SLURM_JOB_ID') || die "sbatch failed"
for _ in $(seq 600); do [ -z "$(squeue -h -j "$job" -o %T 2>/dev/null)" ] && break; sleep 0.2; done
jstate=$(scontrol show job "$job" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
[ "$jstate" = COMPLETED ] || die "the trivial job $job ended $jstate (output: $(cat "$out" 2>/dev/null); see $LOG/slurmd.log)"
grep -q "^ok-$job\$" "$out" || die "the trivial job wrote '$(cat "$out")' instead of ok-$job"
rm -f "$out"
if [ "$started" = 1 ]; then what="up"; else what="already up, checked"; fi
say "$what: node $host $state ($cpus CPUs, $mem MB) in partition $PARTITION (default); sbatch works; $(elapsed) s"
