#!/bin/sh
# A single-node Slurm cluster on this machine, for tests/cluster.rs.
#
#   tests/cluster/slurm.sh start DIR   installs Debian's slurm-wlm and munge with apt when missing
#                                      (as root), starts munged, writes DIR/slurm.conf (one node,
#                                      CPUs = this machine's), starts slurmctld and slurmd with
#                                      their spool, state, log and pid files under DIR, on two
#                                      free ports the kernel picks (written to DIR/ports), and waits
#                                      until the node is idle. Prints `SLURM_CONF=DIR/slurm.conf`.
#   tests/cluster/slurm.sh stop DIR    stops the daemons it started, by their pid files.
#
# Exit 3 means "cannot run here" (not root, no apt, the packages do not install, a daemon does
# not start); the reason is on stderr. Any other failure is exit 1.
set -eu

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 1
fi

cannot() {
    echo "slurm.sh: cannot run a Slurm cluster here: $*" >&2
    exit 3
}

stop_pid() {
    file=$1
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
            sleep 0.1
            i=$((i + 1))
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

case "$cmd" in
stop)
    stop_pid "$dir/slurmd.pid"
    stop_pid "$dir/slurmctld.pid"
    stop_pid "$dir/munged.pid"
    exit 0
    ;;
start) ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 1
    ;;
esac

[ "$(id -u)" = 0 ] || cannot "not root (slurmd and munged need it)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null ||
    ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || cannot "slurm-wlm is not installed and there is no apt-get"
    echo "slurm.sh: installing slurm-wlm and munge with apt" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >"$dir.apt.log" 2>&1; then
        apt-get update -q >>"$dir.apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$dir.apt.log" 2>&1 ||
            cannot "apt-get install slurm-wlm munge failed (see $dir.apt.log)"
    fi
fi

mkdir -p "$dir/spool/ctld" "$dir/spool/d" "$dir/log" "$dir/munge"
# Munge: the packaged key, its own socket and pid file under DIR, run as user munge.
key=/etc/munge/munge.key
[ -s "$key" ] || cannot "$key is missing (the munge package makes it)"
chown munge: "$dir/munge"
chmod 755 "$dir/munge"
socket=$dir/munge/munge.socket
if ! su -s /bin/sh munge -c "munged --socket=$socket --pid-file=$dir/munge/munged.pid \
    --log-file=$dir/munge/munged.log --seed-file=$dir/munge/munged.seed" 2>"$dir/log/munged.err"; then
    cannot "munged did not start: $(cat "$dir/log/munged.err")"
fi
cp "$dir/munge/munged.pid" "$dir/munged.pid"

# Two ports no one listens on, from the kernel (bound to port 0 at once, so they differ), so that
# two clusters on one machine, or a daemon already on Slurm's default ports, do not collide.
command -v python3 >/dev/null || cannot "python3 is missing (it picks the daemons' free ports)"
ports=$(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))') || cannot "no free ports for the daemons"
ctld_port=${ports% *}
d_port=${ports#* }
echo "$ports" >"$dir/ports"

host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ { print int($2 / 1024 / 2) }' /proc/meminfo)
cat >"$dir/slurm.conf" <<EOF
ClusterName=pipetest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
Waittime=0
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$dir/slurm.conf

slurmctld -i -f "$SLURM_CONF" 2>"$dir/log/slurmctld.err" || cannot "slurmctld did not start: $(cat "$dir/log/slurmctld.err")"
slurmd -f "$SLURM_CONF" 2>"$dir/log/slurmd.err" || cannot "slurmd did not start: $(cat "$dir/log/slurmd.err")"

i=0
while :; do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    case "$state" in
    idle*) break ;;
    esac
    i=$((i + 1))
    if [ $i -gt 120 ]; then
        "$0" stop "$dir"
        cannot "the node did not become idle in 60 s (state \"$state\"; see $dir/log)"
    fi
    sleep 0.5
done
echo "SLURM_CONF=$SLURM_CONF"
