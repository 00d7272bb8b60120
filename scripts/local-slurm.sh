#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for vlmtune's `slurm` tests and manual trials.
# Debian 12 (bookworm), run as root; no systemd needed. See scripts/LOCAL-SLURM.md.
#
#   bash scripts/local-slurm.sh start    install (apt, once) + start munge, MariaDB, slurmdbd, slurmctld, slurmd;
#                                        idempotent; returns when the node is idle and sacctmgr answers
#   bash scripts/local-slurm.sh status   exit 0 iff `sinfo` answers and the node is idle/mixed/allocated
#   bash scripts/local-slurm.sh stop     cancel all jobs, stop the daemons this script started (by PID file)
#   PURGE=1 bash scripts/local-slurm.sh stop   ... and wipe SLURM state, logs and the accounting database
#
# Environment:
#   VLMTUNE_SLURM_CPUS=N   advertise N CPUs instead of $(nproc) (more jobs at once; SLURM does not enforce it)
#   VLMTUNE_SLURM_FORCE=1  overwrite an /etc/slurm/slurm.conf this script did not write (a backup is kept)
#
# Where things are:
#   /etc/slurm/slurm.conf, /etc/slurm/slurmdbd.conf   config (the clients sbatch/sinfo/sacct read it there)
#   /var/lib/vlmtune-slurm/{slurmctld,slurmd}/         SLURM state (StateSaveLocation, SlurmdSpoolDir)
#   /var/log/vlmtune-slurm/*.log                       slurmctld, slurmd, slurmdbd, mariadb, munged, apt logs
#   /run/vlmtune-slurm/*.pid                           PID files of the daemons this script started
#   MariaDB database slurm_acct_db (system MariaDB, /var/lib/mysql), user slurm/slurm on localhost
set -euo pipefail

CLUSTER=vlmtune
MARK="# managed by vlmtune scripts/local-slurm.sh"
CONF=/etc/slurm
STATE=/var/lib/vlmtune-slurm
LOG=/var/log/vlmtune-slurm
RUN=/run/vlmtune-slurm
PKGS="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
export SLURM_CONF=$CONF/slurm.conf   # the daemons and clients this script runs use our config, whatever the caller set

t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "[local-slurm +$(elapsed)s] $*"; }
die() { echo "[local-slurm +$(elapsed)s] ERROR: $*" >&2; exit 1; }

# pid_of NAME: pid from our PID file if that process is alive and is really NAME (guards against reused pids)
pid_of() {
  local f="$RUN/$1.pid" pid comm
  [ -s "$f" ] || return 1
  pid=$({ tr -dc 0-9 <"$f"; } 2>/dev/null) || true # the daemon may remove its PID file under our feet
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1   # a zombie is dead
  case "$1" in mariadb) [ "$comm" = mariadbd ] || [ "$comm" = mysqld ] ;; *) [ "$comm" = "$1" ] ;; esac || return 1
  echo "$pid"
}
alive() { pid_of "$1" >/dev/null; }
# live_pids COMM: pids of live processes named COMM, whoever started them (zombies left out: PID 1 here may be
# slow to reap the daemons we just stopped)
live_pids() {
  local p
  for p in $(pgrep -x "$1"); do [ "$(awk '{ print $3 }' "/proc/$p/stat" 2>/dev/null)" = Z ] || echo "$p"; done
}

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.2 s
wait_for() {
  local n=$1 what=$2 i; shift 2
  for ((i = 0; i < n * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "[local-slurm +$(elapsed)s] timed out after ${n}s waiting for: $what" >&2
  return 1
}

# fail_daemon NAME LOGFILE: report a daemon that did not come up, with the end of its log, and exit 1
fail_daemon() {
  echo "[local-slurm +$(elapsed)s] ERROR: $1 did not come up. Its log: $2" >&2
  if [ -s "$2" ]; then echo "----- last lines of $2 -----" >&2; tail -n 25 "$2" >&2; echo "-----" >&2; fi
  echo "All logs: $LOG/  (config: $CONF/slurm.conf, $CONF/slurmdbd.conf)" >&2
  exit 1
}

# a daemon of ours must not collide with one somebody else started
check_not_foreign() {
  local others
  others=$(live_pids "$1")
  if [ -n "$others" ] && ! alive "$1"; then
    die "a $1 not started by this script is running (pid $(echo "$others" | paste -sd,)); stop it first"
  fi
}

mariadb_up() { mysqladmin --connect-timeout=2 ping >/dev/null 2>&1; }

# start MariaDB ourselves (no mysqld_safe, no systemd); records our PID file
start_mariadb() {
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  touch "$LOG/mariadb.log" && chown mysql:mysql "$LOG/mariadb.log"
  setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid --log-error="$LOG/mariadb.log" \
    </dev/null >>"$LOG/mariadb.log" 2>&1 9>&- &
  wait_for 30 "MariaDB to answer mysqladmin ping" mariadb_up || fail_daemon mariadb "$LOG/mariadb.log"
  cp /run/mysqld/mysqld.pid "$RUN/mariadb.pid"
}

install_packages() {
  local missing p
  missing=$(for p in $PKGS; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done | tr '\n' ' ')
  [ -n "${missing// /}" ] || return 0
  log "installing: $missing(log: $LOG/apt.log)"
  # daemons the packages' postinst scripts start are "ours" only if none was running before
  local had_munged=0 had_mariadb=0
  [ -n "$(live_pids munged)" ] && had_munged=1
  [ -n "$(live_pids mariadbd)$(live_pids mysqld)" ] && had_mariadb=1
  # shellcheck disable=SC2086 # $missing is a list of package names
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $missing; } >>"$LOG/apt.log" 2>&1; then
    tail -n 30 "$LOG/apt.log" >&2
    die "apt-get install failed (full log: $LOG/apt.log)"
  fi
  if [ $had_munged = 0 ] && [ -s /run/munge/munged.pid ]; then cp /run/munge/munged.pid "$RUN/munged.pid"; fi
  if [ $had_mariadb = 0 ] && [ -s /run/mysqld/mysqld.pid ]; then cp /run/mysqld/mysqld.pid "$RUN/mariadb.pid"; fi
  log "installed"
}

write_slurm_conf() {
  local cpus mem_kb cg mem_mb first_id tmp
  cpus=${VLMTUNE_SLURM_CPUS:-$(nproc)}
  mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
  cg=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || echo max)           # container limit, if any
  if [[ "$cg" =~ ^[0-9]+$ ]] && ((cg / 1024 < mem_kb)); then mem_kb=$((cg / 1024)); fi
  mem_mb=$((mem_kb * 90 / 100 / 1024))
  # Job ids start from a time-based number on fresh state, so that a purge does not make ids restart at 1
  # (a reused submitit folder would otherwise return stale result pickles of an older job with the same id).
  [ -s "$STATE/first_job_id" ] || echo $(($(date +%s) % 6000000 * 10 + 1000)) >"$STATE/first_job_id"
  first_id=$(cat "$STATE/first_job_id")
  tmp=$(mktemp)
  cat >"$tmp" <<EOF
$MARK (regenerated by every start; edit the script, not this file)
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s -> ~11 s)
AuthInfo=cred_expire=10
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
# cancel jobs whose dependency can never be satisfied (else they pend forever: DependencyNeverSatisfied)
DependencyParameters=kill_invalid_depend
KillWait=5
ReturnToService=2
SlurmdParameters=config_overrides
FirstJobId=$first_id
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
NodeName=localhost CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=other Nodes=localhost Default=NO MaxTime=INFINITE State=UP
EOF
  if [ -f "$CONF/slurm.conf" ] && ! grep -qF "$MARK" "$CONF/slurm.conf"; then
    [ "${VLMTUNE_SLURM_FORCE:-0}" = 1 ] ||
      die "$CONF/slurm.conf was not written by this script; refusing to overwrite it (VLMTUNE_SLURM_FORCE=1 to do so)"
    cp "$CONF/slurm.conf" "$CONF/slurm.conf.vlmtune-backup.$(date +%s)"
  fi
  if ! cmp -s "$tmp" "$CONF/slurm.conf" 2>/dev/null; then
    mv "$tmp" "$CONF/slurm.conf"; chmod 644 "$CONF/slurm.conf"
    CONF_CHANGED=1
  else
    rm -f "$tmp"
  fi

  tmp=$(mktemp)
  cat >"$tmp" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
EOF
  mv "$tmp" "$CONF/slurmdbd.conf"; chmod 600 "$CONF/slurmdbd.conf"
}

node_state() { sinfo -h -n localhost -o %T 2>/dev/null | head -1; }
node_idle() { [ "$(node_state)" = idle ]; }
node_ok() { case "$(node_state)" in idle | mixed | allocated | completing | planned) return 0 ;; *) return 1 ;; esac; }
cluster_registered() { sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; }

cmd_start() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
  mkdir -p "$RUN" "$LOG" "$STATE/slurmctld" "$STATE/slurmd" "$CONF"
  # serialise concurrent starts/stops; every daemon is started with fd 9 closed (9>&-), else it would inherit
  # the lock and hold it for ever
  exec 9>"$RUN/lock"
  flock -w 300 9 || die "another local-slurm.sh holds $RUN/lock"
  install_packages
  for d in slurmctld slurmd slurmdbd; do check_not_foreign "$d"; done
  CONF_CHANGED=0 STARTED=0
  write_slurm_conf

  # munge
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey -c -f -k /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    touch "$LOG/munged.log" && chown munge:munge "$LOG/munged.log"
    runuser -u munge -- /usr/sbin/munged --log-file="$LOG/munged.log" 9>&- ||
      fail_daemon munged "$LOG/munged.log"
    wait_for 10 "munged PID file" test -s /run/munge/munged.pid || fail_daemon munged "$LOG/munged.log"
    cp /run/munge/munged.pid "$RUN/munged.pid"
    log "munged started"
  fi
  wait_for 10 "munge round trip" bash -c 'munge -n | unmunge' || fail_daemon munged "$LOG/munged.log"

  # MariaDB (the system one; reused if somebody else runs it) + the accounting database
  if ! mariadb_up; then start_mariadb; log "mariadb started"; fi
  mysql -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" ||
    die "cannot create the slurm_acct_db database as MariaDB root (unix socket auth expected)"

  # slurmdbd, then register the cluster (adding it also creates account `root` and user root in it)
  if ! alive slurmdbd; then
    slurmdbd 9>&- || fail_daemon slurmdbd "$LOG/slurmdbd.log"
    wait_for 30 "slurmdbd to answer sacctmgr" sacctmgr -n -P show cluster || fail_daemon slurmdbd "$LOG/slurmdbd.log"
    log "slurmdbd started"; STARTED=1
  fi
  if ! cluster_registered; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed"
    log "registered cluster $CLUSTER in slurmdbd"
  fi

  # slurmctld + slurmd (restarted when slurm.conf changed, e.g. another VLMTUNE_SLURM_CPUS: node definitions
  # are not picked up by `scontrol reconfigure`; running jobs survive the restart)
  if [ "$CONF_CHANGED" = 1 ] && { alive slurmctld || alive slurmd; }; then
    log "slurm.conf changed: restarting slurmctld and slurmd"
    stop_daemon slurmd; stop_daemon slurmctld
  fi
  if ! alive slurmctld; then
    slurmctld 9>&- || fail_daemon slurmctld "$LOG/slurmctld.log"
    wait_for 30 "slurmctld to answer scontrol ping" scontrol ping || fail_daemon slurmctld "$LOG/slurmctld.log"
    log "slurmctld started"; STARTED=1
  fi
  if ! alive slurmd; then
    slurmd 9>&- || fail_daemon slurmd "$LOG/slurmd.log"
    wait_for 10 "slurmd PID" alive slurmd || fail_daemon slurmd "$LOG/slurmd.log"
    log "slurmd started"; STARTED=1
  fi
  if ! wait_for 30 "node localhost up" node_ok; then
    log "node state '$(node_state)': scontrol update state=resume"
    scontrol update nodename=localhost state=resume 2>/dev/null || true
    wait_for 20 "node localhost up after resume" node_ok || fail_daemon slurmd "$LOG/slurmd.log"
  fi
  wait_for 30 "slurmctld registered with slurmdbd" cluster_registered || fail_daemon slurmdbd "$LOG/slurmdbd.log"
  # smoke job, only when this call started a SLURM daemon (a running cluster may be busy with others' jobs):
  # runs a job end to end, and waits until accounting has recorded it (right after a fresh start slurmctld
  # takes a few seconds to send job records to slurmdbd; submitit's job.state reads sacct)
  local smoke
  if [ "$STARTED" = 1 ]; then
    if ! smoke=$(timeout 60 srun --job-name=local-slurm-smoke -t 1 printenv SLURM_JOB_ID) || [ -z "$smoke" ]; then
      echo "smoke job (srun printenv SLURM_JOB_ID) failed" >&2; fail_daemon slurmd "$LOG/slurmd.log"
    fi
    wait_for 30 "sacct to record the smoke job $smoke as COMPLETED" \
      bash -c "sacct -n -X -j $smoke -o State | grep -q COMPLETED" || fail_daemon slurmdbd "$LOG/slurmdbd.log"
  fi
  log "cluster ready: $(sinfo -h -o '%P %a %D %T %N' | tr '\n' ';' | sed 's/;$//')"
}

# stop_daemon NAME: SIGTERM the pid of our PID file, wait up to 30 s, then SIGKILL
stop_daemon() {
  local pid i
  if pid=$(pid_of "$1"); then
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do pid_of "$1" >/dev/null || break; sleep 0.2; done
    if pid_of "$1" >/dev/null; then echo "$1 (pid $pid) still alive after 30 s: SIGKILL"; kill -9 "$pid" || true; fi
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$RUN/$1.pid"
}

cmd_stop() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  mkdir -p "$RUN"
  exec 9>"$RUN/lock"
  flock -w 300 9 || die "another local-slurm.sh holds $RUN/lock"
  local i
  if alive slurmctld; then # cancel jobs first, so that slurmd does not linger over running steps
    squeue -h -o %A 2>/dev/null | xargs -r scancel || true
    for ((i = 0; i < 60; i++)); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  for d in slurmd slurmctld slurmdbd; do stop_daemon "$d"; done
  if [ "${PURGE:-0}" = 1 ]; then
    # drop the database through SQL (deleting its files would leave InnoDB entries behind)
    if command -v mysqladmin >/dev/null; then
      if ! mariadb_up; then mkdir -p "$LOG"; start_mariadb; fi
      mysql -u root -e "DROP DATABASE IF EXISTS slurm_acct_db" && log "dropped database slurm_acct_db"
    fi
    rm -rf "${STATE:?}"/* "${LOG:?}"/*
    log "purged SLURM state ($STATE) and logs ($LOG)"
  fi
  for d in mariadb munged; do stop_daemon "$d"; done
  if [ "${PURGE:-0}" = 1 ]; then
    local left
    left=$(for d in slurmctld slurmd slurmdbd munged mariadbd mysqld; do
      for p in $(live_pids "$d"); do echo "  $p $d"; done
    done)
    [ -z "$left" ] || echo "still running (not started by this script, left alone):"$'\n'"$left"
  fi
}

cmd_status() {
  local d pid rc=0 state
  for d in munged mariadb slurmdbd slurmctld slurmd; do
    if pid=$(pid_of "$d"); then printf '%-10s running (pid %s)\n' "$d" "$pid"
    else printf '%-10s not running from this script\n' "$d"; fi
  done
  if command -v sinfo >/dev/null && timeout 5 sinfo >/dev/null 2>&1; then
    timeout 5 sinfo
    state=$(timeout 5 sinfo -h -n localhost -o %T 2>/dev/null | head -1)
    case "$state" in idle | mixed | allocated | completing | planned) echo "node localhost: $state" ;;
      *) echo "node localhost: ${state:-absent} (not usable)"; rc=1 ;; esac
  else
    echo "sinfo does not answer: no cluster (start one with: bash scripts/local-slurm.sh start)"; rc=1
  fi
  echo "logs: $LOG/   config: $CONF/slurm.conf   state: $STATE/"
  return $rc
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: [PURGE=1] bash $0 start|stop|status" >&2; exit 2 ;;
esac
