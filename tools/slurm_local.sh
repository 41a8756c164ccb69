#!/usr/bin/env bash
# A real one-node slurm cluster on this machine, private to one state directory, for testing slurm/*.sbatch.
#
#   tools/slurm_local.sh start [STATE_DIR]    install slurm-wlm + munge if missing (apt, root), write slurm.conf,
#                                             start munged, slurmctld and slurmd, wait until the node is idle
#   export SLURM_CONF=STATE_DIR/slurm.conf    then sbatch / srun / squeue / scontrol talk to this cluster
#   tools/slurm_local.sh status [STATE_DIR]   the daemons it started and the node state
#   tools/slurm_local.sh stop [STATE_DIR]     cancel this cluster's jobs, stop exactly the daemons it started (by PID)
#   tools/slurm_local.sh install              only the apt step
#
# STATE_DIR defaults to $APR_DS_SLURM_DIR, else /tmp/apr-ds-slurm. Everything lives there: slurm.conf, the munge key
# and socket, free ports chosen at start, spool and state, logs, the job-completion record (jobcomp.txt), and one
# PID file per daemon. Nothing under /etc is written, so a system slurm or munge on the same machine is left alone.
#
# The node is this machine under its real hostname (NodeAddr 127.0.0.1) with what `slurmd -C` reports
# (CPUs, sockets, memory); SLURM_LOCAL_CPUS=N declares N CPUs instead, to let jobs oversubscribe a small machine.
# Accounting has no database: finished jobs stay in `scontrol show job` for an hour (MinJobAge) and are appended
# to jobcomp.txt (JobState=COMPLETED/FAILED/...). `sacct` does not work on this cluster.
# Needs root (slurmd starts jobs as their user; apt). Exit codes: 0 ok, 1 failure, 3 slurm cannot be installed
# (apt unreachable or not root): a test that needs slurm skips on 3.
set -euo pipefail

STATE_DIR_DEFAULT=${APR_DS_SLURM_DIR:-/tmp/apr-ds-slurm}
START_TIMEOUT_S=${SLURM_LOCAL_TIMEOUT_S:-90}
NO_SLURM=3

say() { echo "slurm_local: $*" >&2; }
die() { say "error: $*"; exit 1; }

have_slurm() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null
}

install_slurm() {
    have_slurm && return 0
    "$(dirname "$0")/apt_install.sh" slurm-wlm munge || exit $?
    have_slurm || { say "slurm-wlm installed but slurmctld/slurmd/sbatch/munged are not on PATH"; exit $NO_SLURM; }
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# "PID STARTTIME" of a live process. The start time (clock ticks since boot, /proc/PID/stat field 22) tells our daemon
# from a later process that reuses its PID. The command line cannot: it reads empty while a process execs, and a
# daemon checked right after `setsid daemon &` was taken for dead that way on a loaded CI machine.
pid_identity() {
    local pid=$1 stat fields
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    read -r -a fields <<<"${stat##*) }"  # after the command name, which may hold spaces and parentheses
    [[ ${fields[0]} != [ZX] ]] || return 1
    echo "$pid ${fields[19]}"
}

record_pid() {  # name pid
    pid_identity "$2" >"$STATE_DIR/$1.pid" || echo "$2 exited" >"$STATE_DIR/$1.pid"
}

# The PID in a PID file, if that process is alive and is still the one recorded.
live_pid() {
    local pid_file=$1 recorded
    [[ -s $pid_file ]] || return 1
    recorded=$(<"$pid_file")
    [[ $recorded =~ ^[0-9]+\ [0-9]+$ ]] || return 1
    [[ $(pid_identity "${recorded% *}") == "$recorded" ]] || return 1
    echo "${recorded% *}"
}

# Print why a daemon we started is gone: its exit status (only our own children report one) and its log tail.
report_exit() {  # name
    local name=$1 pid status=0
    pid=$(cut -d' ' -f1 "$STATE_DIR/$name.pid" 2>/dev/null || echo none)
    [[ $pid =~ ^[0-9]+$ ]] && { wait "$pid" 2>/dev/null || status=$?; }  # 127: not our child
    tail -n 20 "$STATE_DIR/log/$name".* >&2 || true
    say "$name (pid $pid) exited during start with status $status; logs in $STATE_DIR/log"
}

write_config() {
    local node_line cpus ctld_port slurmd_port
    node_line=$(slurmd -C | head -n 1)
    [[ $node_line == NodeName=* ]] || die "slurmd -C printed no NodeName line: $node_line"
    NODE=$(hostname -s)
    node_line=${node_line/NodeName=* CPUs=/NodeName=$NODE NodeAddr=127.0.0.1 CPUs=}
    local overrides=""
    if [[ -n ${SLURM_LOCAL_CPUS:-} ]]; then
        # Declaring more CPUs than the hardware has needs config_overrides, and then the topology fields must agree.
        cpus=$SLURM_LOCAL_CPUS
        node_line="NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")"
        overrides="SlurmdParameters=config_overrides"
    fi
    # Job ids differ from one start to the next: MPICH names its shared-memory segments after the PMI job id
    # (jobid.step), and a segment left in /dev/shm by a killed rank of an earlier cluster's job with the same id
    # makes MPI_Init fail ("MPIDI_POSIX_comm_bootstrap: Out of memory"). A real cluster never reuses ids.
    local first_job_id=$(( $(date +%s) % 60000000 + 1 ))
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    while [[ $slurmd_port == "$ctld_port" ]]; do slurmd_port=$(free_port); done
    mkdir -p "$STATE_DIR"/{state,spool,log,munge}
    cat >"$STATE_DIR/slurm.conf" <<EOF
# Written by tools/slurm_local.sh: a one-node cluster private to $STATE_DIR.
ClusterName=aprds
FirstJobId=$first_job_id
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE_DIR/munge/munge.socket
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid.slurm
SlurmdPidFile=$STATE_DIR/slurmd.pid.slurm
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
# linuxproc follows a job's processes by parent, so a child that starts its own session (an inference server)
# is still the job's and is ended with it. cgroup plugins need a systemd/cgroup setup containers rarely have.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/jobcomp.txt
MinJobAge=3600
KillWait=10
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=60
PlugStackConfig=$STATE_DIR/plugstack.conf
$overrides
$node_line State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    : >"$STATE_DIR/plugstack.conf"
    echo "$NODE" >"$STATE_DIR/node"
}

write_munge_key() {
    local key=$STATE_DIR/munge/munge.key
    [[ -s $key ]] || { dd if=/dev/urandom of="$key" bs=1 count=1024 status=none; }
    chmod 700 "$STATE_DIR/munge"
    chmod 400 "$key"
}

# Config, key and a clean state: a failure here is a real error, so this runs where `set -e` ends the script.
write_state() {
    rm -rf "$STATE_DIR/state" "$STATE_DIR/spool"
    write_config
    write_munge_key
}

start_munge() {
    local key=$STATE_DIR/munge/munge.key
    # --force: munged refuses root and group-writable parents (/tmp) without it.
    setsid munged --foreground --force --socket="$STATE_DIR/munge/munge.socket" --key-file="$key" \
        --pid-file="$STATE_DIR/munge/munged.pid" --seed-file="$STATE_DIR/munge/munged.seed" \
        --log-file="$STATE_DIR/log/munged.log" </dev/null >>"$STATE_DIR/log/munged.out" 2>&1 &
    record_pid munged $!
    local deadline=$((SECONDS + 20))
    until [[ -S $STATE_DIR/munge/munge.socket ]]; do
        live_pid "$STATE_DIR/munged.pid" >/dev/null || { report_exit munged; return 1; }
        ((SECONDS < deadline)) || { say "munged did not create its socket in 20 s"; return 1; }
        sleep 0.2
    done
}

start_daemon() {  # name binary...
    local name=$1; shift
    setsid "$@" </dev/null >>"$STATE_DIR/log/$name.out" 2>&1 &
    record_pid "$name" $!
}

# 1 if munged exits before it listens. Called as `start_daemons && ...`, where `set -e` does not apply inside.
start_daemons() {
    start_munge || return 1
    export SLURM_CONF=$STATE_DIR/slurm.conf
    start_daemon slurmctld slurmctld -D -i -f "$SLURM_CONF"
    start_daemon slurmd slurmd -D -f "$SLURM_CONF" -N "$(<"$STATE_DIR/node")"
}

# 0 once the node is idle; 1 if a daemon exited first (its log tail and exit status are printed); dies on timeout.
wait_until_idle() {
    local node state daemon deadline=$((SECONDS + START_TIMEOUT_S))
    node=$(<"$STATE_DIR/node")
    while :; do
        for daemon in munged slurmctld slurmd; do
            live_pid "$STATE_DIR/$daemon.pid" >/dev/null || { report_exit "$daemon"; return 1; }
        done
        state=$(timeout 10 sinfo -h -n "$node" -o %T 2>/dev/null || true)
        [[ $state == idle ]] && return 0
        ((SECONDS < deadline)) || die "node $node is '${state:-unreachable}', not idle, after ${START_TIMEOUT_S} s; logs in $STATE_DIR/log"
        sleep 0.5
    done
}

cmd_start() {
    local attempt attempts=3
    export SLURM_CONF=$STATE_DIR/slurm.conf
    if live_pid "$STATE_DIR/slurmctld.pid" >/dev/null && live_pid "$STATE_DIR/slurmd.pid" >/dev/null; then
        say "already running in $STATE_DIR"
        wait_until_idle || die "a daemon of the running cluster exited"
    else
        [[ $(id -u) == 0 ]] || { say "starting slurmd needs root"; exit $NO_SLURM; }
        install_slurm
        # A start can fail for reasons outside this script, such as a chosen port taken before its daemon binds it;
        # it is retried from clean state and fresh ports, and each failure is reported.
        for attempt in $(seq 1 $attempts); do
            cmd_stop quiet  # whatever a previous start in this directory left behind
            write_state
            start_daemons && wait_until_idle && break
            ((attempt < attempts)) || { cmd_stop quiet; die "the cluster did not start in $attempts attempts"; }
            say "start attempt $attempt of $attempts failed; retrying"
            sleep 2
        done
    fi
    say "node $(<"$STATE_DIR/node") idle; use: export SLURM_CONF=$SLURM_CONF"
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop_pid() {  # name
    local name=$1 pid
    pid=$(live_pid "$STATE_DIR/$name.pid") || { rm -f "$STATE_DIR/$name.pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        live_pid "$STATE_DIR/$name.pid" >/dev/null || break
        sleep 0.1
    done
    if live_pid "$STATE_DIR/$name.pid" >/dev/null; then
        say "$name ($pid) ignored SIGTERM for 10 s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE_DIR/$name.pid"
}

cmd_stop() {
    local quiet=${1:-}
    if live_pid "$STATE_DIR/slurmctld.pid" >/dev/null && [[ -f $STATE_DIR/slurm.conf ]]; then
        # Jobs of this cluster are ours: cancel them and let slurmd end their steps before it goes.
        export SLURM_CONF=$STATE_DIR/slurm.conf
        timeout 10 scancel --full "--cluster=aprds" --state=RUNNING 2>/dev/null || true
        timeout 10 scancel "--cluster=aprds" --state=PENDING 2>/dev/null || true
        local deadline=$((SECONDS + 30))
        while [[ -n $(timeout 10 squeue -h -o %i 2>/dev/null || true) ]] && ((SECONDS < deadline)); do sleep 0.5; done
    fi
    stop_pid slurmd
    stop_pid slurmctld
    stop_pid munged
    [[ -n $quiet ]] || say "stopped the daemons started in $STATE_DIR"
}

cmd_status() {
    local any=0
    for daemon in munged slurmctld slurmd; do
        if pid=$(live_pid "$STATE_DIR/$daemon.pid"); then echo "$daemon running, pid $pid"; any=1
        else echo "$daemon not running"; fi
    done
    if ((any)) && [[ -f $STATE_DIR/slurm.conf ]]; then
        SLURM_CONF=$STATE_DIR/slurm.conf timeout 10 sinfo -N -o "%N %T %c" || true
    fi
}

main() {
    local command=${1:-}
    STATE_DIR=$(realpath -m "${2:-$STATE_DIR_DEFAULT}")
    case $command in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        install) install_slurm ;;
        *) sed -n '2,20p' "$0" >&2; exit 2 ;;
    esac
}

main "$@"
