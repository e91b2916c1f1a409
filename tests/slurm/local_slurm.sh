#!/usr/bin/env bash
# local_slurm.sh - install / start / stop a real single-node SLURM cluster
# (slurmctld + slurmd + munged) for tests and CI.  Needs root.
#
#   tests/slurm/local_slurm.sh install   # apt-get slurm-wlm + munge if missing
#   eval "$(tests/slurm/local_slurm.sh start)"   # prints: export SLURM_CONF=...
#   tests/slurm/local_slurm.sh status    # rc 0 iff node idle/mixed/alloc
#   tests/slurm/local_slurm.sh env       # prints the export line only
#   tests/slurm/local_slurm.sh stop      # cancels jobs, kills our daemons
#
# Everything (config, munge key + socket, spool, logs, pid files) lives in
# $PTYCHO_SLURM_DIR (default /tmp/ptycho-slurm).  The only thing outside it is
# a symlink /etc/slurm/slurm.conf -> $PTYCHO_SLURM_DIR/etc/slurm.conf while the
# cluster runs (never replaces a real file; removed by `stop`).  munged uses
# its own socket, so a system munge/slurm installation is left alone.
# All diagnostics go to stderr; stdout of `start`/`env` is only the export line.
#
# Environment overrides:
#   PTYCHO_SLURM_DIR        state dir                    [/tmp/ptycho-slurm]
#   PTYCHO_SLURM_CTLD_PORT  slurmctld port               [6817]
#   PTYCHO_SLURM_D_PORT     slurmd port                  [6818]
#   PTYCHO_SLURM_MINJOBAGE  MinJobAge (s); keep >= 200 if snakemake's slurm
#                           plugin uses squeue for status (see README)  [300]
#   PTYCHO_SLURM_TIMEOUT    seconds to wait for the node to become idle [30]
#   PTYCHO_SLURM_LINK_DEFAULT 1 = symlink /etc/slurm/slurm.conf -> our config
#                           while running (needed by snakemake's slurm plugin,
#                           whose in-job `srun` runs without SLURM_CONF)  [1]
#   PTYCHO_SLURM_SMOKE      1 = run srun + sbatch smoke jobs on start     [1]
set -euo pipefail

STATE_DIR="${PTYCHO_SLURM_DIR:-/tmp/ptycho-slurm}"
CTLD_PORT="${PTYCHO_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${PTYCHO_SLURM_D_PORT:-6818}"
MIN_JOB_AGE="${PTYCHO_SLURM_MINJOBAGE:-300}"
WAIT_TIMEOUT="${PTYCHO_SLURM_TIMEOUT:-30}"
SMOKE="${PTYCHO_SLURM_SMOKE:-1}"

NODE_NAME="localhost"          # fixed name; slurmd is started with -N localhost
NODE_ADDR="127.0.0.1"
PARTITION="debug"
CLUSTER_NAME="ptycho"

CONF="$STATE_DIR/etc/slurm.conf"
MUNGE_DIR="$STATE_DIR/munge"
MUNGE_KEY="$MUNGE_DIR/munge.key"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket.2"
MUNGE_PID="$MUNGE_DIR/munged.pid"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/log"
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"
# compiled-in default config path of Debian's slurm (see README: the snakemake
# slurm-jobstep plugin strips SLURM_CONF before its nested `srun`)
DEFAULT_CONF="${PTYCHO_SLURM_DEFAULT_CONF:-/etc/slurm/slurm.conf}"
LINK_DEFAULT="${PTYCHO_SLURM_LINK_DEFAULT:-1}"

# daemons live in /usr/sbin which is not always on a non-login PATH
export PATH="$PATH:/usr/sbin:/sbin"

log() { printf "[local_slurm %s] %s\n" "$(date +%T.%N | cut -c1-12)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() {
    [[ "$(id -u)" == 0 ]] || die "must run as root (daemons run as SlurmUser=root)"
}

have_binaries() {
    local b
    for b in slurmctld slurmd munged sbatch srun squeue sinfo scontrol scancel; do
        command -v "$b" >/dev/null 2>&1 || return 1
    done
}

cmd_install() {
    if have_binaries; then
        log "slurm + munge already installed ($(slurmd -V 2>/dev/null || echo '?'))"
        return 0
    fi
    need_root
    log "installing slurm-wlm + munge via apt-get ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # --no-install-recommends: the recommends are docs/mail tooling only
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2
    have_binaries || die "installation finished but slurm binaries are still missing"
    log "installed $(slurmd -V)"
}

# --- process helpers -------------------------------------------------------

# proc_running PID: exists and is not a zombie (a killed daemon can linger as
# a zombie when PID 1 does not reap promptly, e.g. in containers)
proc_running() {
    local state
    state="$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# is_prog PID NAME: process PID runs program NAME.  Debian installs the real
# binaries as /usr/sbin/slurmctld-wlm etc. (slurmctld is an alternatives
# symlink), so accept NAME or NAME-wlm as the exe basename, or NAME as comm.
is_prog() {
    local pid="$1" name="$2" exe comm
    proc_running "$pid" || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    exe="$(basename "${exe% (deleted)}")"
    [[ "$exe" == "$name" || "$exe" == "$name-wlm" ]] && return 0
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [[ "$comm" == "$name" ]]
}

# pid_alive PIDFILE NAME -> echo pid and rc 0 if pidfile's process is alive
# and its executable basename is NAME (guards against recycled pids).
pid_alive() {
    local pidfile="$1" name="$2" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n "$pid" ]] || return 1
    [[ -d "/proc/$pid" ]] || return 1
    is_prog "$pid" "$name" || return 1
    echo "$pid"
}

kill_pidfile() {
    local pidfile="$1" name="$2" pid i
    if pid="$(pid_alive "$pidfile" "$name")"; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do
            proc_running "$pid" || break
            sleep 0.1
        done
        if proc_running "$pid"; then
            log "$name did not exit on SIGTERM, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
    fi
    rm -f "$pidfile"
}

# pids of slurmstepd processes spawned by *our* slurmd (they inherit
# SLURM_CONF=$CONF from the slurmd environment) - they survive slurmd exit.
our_stepds() {
    local p comm
    for p in /proc/[0-9]*; do
        # builtin read, no forks: this loops over every process
        comm=""
        { read -r comm <"$p/comm"; } 2>/dev/null || continue
        [[ "$comm" == slurmstepd ]] || continue
        proc_running "${p#/proc/}" || continue
        if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qx "SLURM_CONF=$CONF"; then
            echo "${p#/proc/}"
        fi
    done
}

# pids of job processes of our cluster (environment has SLURM_JOB_ID and our
# SLURM_CONF, which slurmstepd puts into every job's environment).  Only
# needed when slurmstepd was SIGKILLed and could not clean up its job.
our_job_procs() {
    local p pid envs has_conf has_job e
    for p in /proc/[0-9]*; do
        pid="${p#/proc/}"
        [[ "$pid" == "$$" || "$pid" == "$PPID" ]] && continue
        envs=()
        { mapfile -d '' -t envs <"$p/environ"; } 2>/dev/null || continue
        has_conf=0 has_job=0
        for e in "${envs[@]}"; do
            [[ "$e" == "SLURM_CONF=$CONF" ]] && has_conf=1
            [[ "$e" == SLURM_JOB_ID=* ]] && has_job=1
        done
        (( has_conf && has_job )) && proc_running "$pid" && echo "$pid"
    done
    return 0
}

# --- status ----------------------------------------------------------------

node_state() {
    [[ -f "$CONF" ]] || return 1
    # without a live slurmctld, sinfo would retry for MessageTimeout (10 s)
    pid_alive "$CTLD_PID" slurmctld >/dev/null || return 1
    SLURM_CONF="$CONF" timeout 10 sinfo -h -n "$NODE_NAME" -o '%T' 2>/dev/null | head -n1
}

daemons_alive() {
    pid_alive "$MUNGE_PID" munged >/dev/null &&
        pid_alive "$CTLD_PID" slurmctld >/dev/null &&
        pid_alive "$SLURMD_PID" slurmd >/dev/null
}

cluster_ok() {
    local st
    daemons_alive || return 1
    st="$(node_state)" || return 1
    # sinfo appends '*' (not responding) / '~' etc. to the state
    [[ "$st" =~ ^(idle|mixed|allocated|completing)$ ]]
}

cmd_status() {
    local st d
    for d in "$MUNGE_PID:munged" "$CTLD_PID:slurmctld" "$SLURMD_PID:slurmd"; do
        pid_alive "${d%%:*}" "${d##*:}" >/dev/null || log "${d##*:} is not running"
    done
    if st="$(node_state)" && [[ -n "$st" ]]; then
        log "node $NODE_NAME state: $st"
    else
        log "cluster not answering (SLURM_CONF=$CONF)"
        return 1
    fi
    cluster_ok
}

print_env() { echo "export SLURM_CONF=$CONF"; }

# --- start -----------------------------------------------------------------

write_config() {
    local c_line cpus mem boards sockets cores threads defmem
    c_line="$(slurmd -C 2>/dev/null | head -n1)"
    [[ -n "$c_line" ]] || die "slurmd -C printed nothing"
    cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$c_line")"
    boards="$(sed -n 's/.*Boards=\([0-9]*\).*/\1/p' <<<"$c_line")"
    sockets="$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$c_line")"
    cores="$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$c_line")"
    threads="$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$c_line")"
    mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$c_line")"
    [[ -n "$cpus" && -n "$mem" ]] || die "cannot parse 'slurmd -C': $c_line"
    # default memory per allocated CPU when a job gives no --mem: an equal
    # share of the node, so that jobs without --mem do not grab the whole node
    defmem=$(( mem / cpus ))
    local topo=""
    if [[ -n "$boards" && -n "$sockets" && -n "$cores" && -n "$threads" ]]; then
        topo="Boards=$boards SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads"
    fi

    mkdir -p "$STATE_DIR/etc"
    cat >"$CONF.tmp" <<EOF
# generated by tests/slurm/local_slurm.sh - single-node test cluster
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE_NAME($NODE_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE_DIR/spool/ctld
SlurmdSpoolDir=$STATE_DIR/spool/d
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# start queued batch jobs right away (default batch_sched_delay=3 s)
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
MinJobAge=$MIN_JOB_AGE
NodeName=$NODE_NAME NodeHostname=$NODE_NAME NodeAddr=$NODE_ADDR CPUs=$cpus $topo RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP
EOF
    mv -f "$CONF.tmp" "$CONF"
    # no GPUs / GRES: make sure no stale gres.conf is picked up next to it
    rm -f "$STATE_DIR/etc/gres.conf" "$STATE_DIR/etc/cgroup.conf"
    log "wrote $CONF (CPUs=$cpus RealMemory=$mem DefMemPerCPU=$defmem)"
}

# make $CONF visible at the compiled-in default path so that clients that
# run without SLURM_CONF (nested `srun` of snakemake's jobstep plugin) find it
link_default_conf() {
    [[ "$LINK_DEFAULT" == 1 ]] || return 0
    if [[ -e "$DEFAULT_CONF" && ! -L "$DEFAULT_CONF" ]]; then
        log "WARNING: $DEFAULT_CONF is a real file, not linking; commands run" \
            "without SLURM_CONF (e.g. snakemake jobstep srun) will use it"
        return 0
    fi
    if [[ -L "$DEFAULT_CONF" && "$(readlink "$DEFAULT_CONF")" != "$CONF" ]]; then
        log "WARNING: re-pointing $DEFAULT_CONF from $(readlink "$DEFAULT_CONF") to $CONF"
    fi
    mkdir -p "$(dirname "$DEFAULT_CONF")"
    ln -sfn "$CONF" "$DEFAULT_CONF"
}

unlink_default_conf() {
    if [[ -L "$DEFAULT_CONF" && "$(readlink "$DEFAULT_CONF")" == "$CONF" ]]; then
        rm -f "$DEFAULT_CONF"
    fi
}

start_munge() {
    if pid_alive "$MUNGE_PID" munged >/dev/null && [[ -S "$MUNGE_SOCKET" ]]; then
        return 0
    fi
    mkdir -p "$MUNGE_DIR"
    # socket dir must be world-executable, else non-root clients cannot auth;
    # the key itself stays 0600
    chmod 0755 "$MUNGE_DIR"
    if [[ ! -s "$MUNGE_KEY" ]]; then
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$MUNGE_KEY" >&2
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    chown root:root "$MUNGE_KEY"
    chmod 0600 "$MUNGE_KEY"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" "$MUNGE_PID"
    # --force: munged refuses to run as root otherwise (and is picky about
    # directory permissions under /tmp).
    munged --force \
        --socket="$MUNGE_SOCKET" \
        --key-file="$MUNGE_KEY" \
        --pid-file="$MUNGE_PID" \
        --log-file="$MUNGE_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" \
        >&2 9>&- || die "munged failed to start, see $MUNGE_DIR/munged.log"
    local i
    for i in $(seq 1 50); do
        [[ -S "$MUNGE_SOCKET" ]] && break
        sleep 0.1
    done
    [[ -S "$MUNGE_SOCKET" ]] || die "munge socket $MUNGE_SOCKET did not appear"
    if command -v munge >/dev/null 2>&1; then
        munge -n --socket="$MUNGE_SOCKET" | unmunge --socket="$MUNGE_SOCKET" >/dev/null \
            || die "munge self-test failed"
    fi
}

wait_node_ready() {
    local deadline=$((SECONDS + WAIT_TIMEOUT)) st=""
    while (( SECONDS < deadline )); do
        st="$(node_state || true)"
        if [[ "$st" =~ ^(idle|mixed|allocated|completing)$ ]]; then
            log "node $NODE_NAME is $st"
            return 0
        fi
        # a node that came back as DOWN/DRAIN from a previous life: resume it
        if [[ "$st" == down* || "$st" == drain* ]]; then
            SLURM_CONF="$CONF" scontrol update NodeName="$NODE_NAME" State=RESUME >/dev/null 2>&1 || true
        fi
        sleep 0.5
    done
    log "node did not become idle within ${WAIT_TIMEOUT}s (last state: '${st:-none}')"
    SLURM_CONF="$CONF" scontrol show node "$NODE_NAME" >&2 2>&1 || true
    tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true
    return 1
}

smoke_test() {
    # 1) interactive step: srun returns as soon as the step ends (~0.1 s)
    local out rc=0 jobid st="" deadline
    out="$(cd "$STATE_DIR" && SLURM_CONF="$CONF" timeout 30 srun -N1 -n1 -p "$PARTITION" \
        -J ptycho-smoke echo ok 2>&1)" || rc=$?
    if [[ $rc -ne 0 || "$out" != ok ]]; then
        log "srun smoke test failed (rc=$rc): $out"
        return 1
    fi
    # 2) batch job, polled via squeue (`sbatch --wait` polls at a coarse
    #    2..10 s interval, making start ~10 s slower)
    rm -f "$STATE_DIR/smoke.out"
    jobid="$(cd "$STATE_DIR" && SLURM_CONF="$CONF" timeout 10 sbatch --parsable -p "$PARTITION" \
        -J ptycho-smoke -o "$STATE_DIR/smoke.out" --wrap 'echo ok')" \
        || { log "sbatch smoke submission failed"; return 1; }
    jobid="${jobid%%;*}"
    deadline=$((SECONDS + 30))
    while (( SECONDS < deadline )); do
        st="$(SLURM_CONF="$CONF" squeue -h -t all -j "$jobid" -o '%T' 2>/dev/null || true)"
        case "$st" in
            COMPLETED) break ;;
            FAILED|CANCELLED|TIMEOUT|NODE_FAIL|BOOT_FAIL|OUT_OF_MEMORY|DEADLINE)
                log "sbatch smoke job $jobid ended $st"; return 1 ;;
        esac
        sleep 0.2
    done
    if [[ "$st" != COMPLETED ]] || ! grep -qx ok "$STATE_DIR/smoke.out" 2>/dev/null; then
        log "sbatch smoke job $jobid: state '$st', output: $(cat "$STATE_DIR/smoke.out" 2>/dev/null || echo '<none>')"
        return 1
    fi
    log "smoke tests OK (srun + sbatch job $jobid)"
}

cmd_start() {
    need_root
    have_binaries || die "slurm not installed; run '$0 install' first"
    if cluster_ok; then
        log "cluster already running ($CONF)"
        link_default_conf
        print_env
        return 0
    fi
    # half-alive leftovers from an earlier run -> clean slate
    cmd_stop || true

    mkdir -p "$STATE_DIR" "$RUN_DIR" "$LOG_DIR" "$STATE_DIR/spool/ctld" "$STATE_DIR/spool/d"
    chmod 0755 "$STATE_DIR"
    write_config
    link_default_conf
    start_munge

    export SLURM_CONF="$CONF"
    # -c: start with a clean job state (no jobs resurrected from a previous run)
    # 9>&-: daemons must not inherit (and so hold forever) the flock fd
    slurmctld -c -f "$CONF" >&2 9>&- || die "slurmctld failed, see $LOG_DIR/slurmctld.log"
    slurmd -f "$CONF" -N "$NODE_NAME" >&2 9>&- || die "slurmd failed, see $LOG_DIR/slurmd.log"
    if ! wait_node_ready; then
        cmd_stop >/dev/null 2>&1 || true
        die "cluster did not come up"
    fi
    if [[ "$SMOKE" == 1 ]] && ! smoke_test; then
        tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true
        cmd_stop >/dev/null 2>&1 || true
        die "smoke job failed"
    fi
    log "cluster up; partition '$PARTITION', node '$NODE_NAME'"
    print_env
}

# --- stop ------------------------------------------------------------------

cmd_stop() {
    local pid stepds i
    if pid_alive "$CTLD_PID" slurmctld >/dev/null; then
        # cancel everything still queued/running so no slurmstepd is orphaned
        SLURM_CONF="$CONF" timeout 10 scancel --quiet --partition="$PARTITION" >/dev/null 2>&1 || true
        for i in $(seq 1 25); do
            [[ -z "$(our_stepds)" ]] && break
            sleep 0.2
        done
    fi
    kill_pidfile "$SLURMD_PID" slurmd
    kill_pidfile "$CTLD_PID" slurmctld
    stepds="$(our_stepds)"
    if [[ -n "$stepds" ]]; then
        log "killing leftover slurmstepd: $stepds"
        # shellcheck disable=SC2086
        kill -KILL $stepds 2>/dev/null || true
        sleep 0.2
        local jobprocs
        jobprocs="$(our_job_procs | tr '\n' ' ')"
        if [[ -n "${jobprocs// }" ]]; then
            log "killing orphaned job processes: $jobprocs"
            # shellcheck disable=SC2086
            kill -KILL $jobprocs 2>/dev/null || true
        fi
    fi
    kill_pidfile "$MUNGE_PID" munged
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    unlink_default_conf
    log "stopped"
}

usage() {
    sed -n '2,/^[^#]/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# serialise concurrent invocations (e.g. several pytest-xdist workers calling
# start at once); the lock file lives next to, not inside, the state dir
take_lock() {
    command -v flock >/dev/null 2>&1 || return 0
    mkdir -p "$(dirname "$STATE_DIR")"
    exec 9>"$STATE_DIR.lock"
    flock -w 300 9 || die "could not lock $STATE_DIR.lock"
}

case "${1:-}" in
    install) take_lock; cmd_install ;;
    start) take_lock; cmd_start ;;
    stop) take_lock; cmd_stop ;;
    status) cmd_status ;;
    env) print_env ;;
    restart) take_lock; cmd_stop; cmd_start ;;
    *) usage ;;
esac
