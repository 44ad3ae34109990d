#!/usr/bin/env bash
# An N-node test cluster on one Linux machine, made of network namespaces (see README.md).
#
#   cluster.sh up   DIR [--nodes N] [--slots S] [--rate RATE] [--slurm] [--name TAG]
#   cluster.sh down DIR
#   cluster.sh exec DIR I -- CMD...    run CMD on node I (1-based) in its net+uts+mount namespaces
#   cluster.sh link DIR I up|down      bring node I's link to the bridge up or down
#   cluster.sh pids DIR I              pids in node I's net namespace but its sshd/munged/slurmd
#   cluster.sh check [--slurm]         exit 0 if a cluster can be built here, else say why, exit 77
#
# Layout: bridge ${TAG}br = 10.77.0.1/24 in the root namespace (the login/head node); node I is
# namespace ${TAG}I, address 10.77.0.(I+1) on its eth0, whose peer ${TAG}vI is a bridge port.
# Each node runs an sshd in its own net + uts (hostname nodeI) + mount namespace (DIR/local is
# DIR/nodeI.local there, /etc/hosts is DIR/hosts); slurmd joins the namespaces of that sshd.
# Must run as root. Only one cluster can be up at a time (the subnet is fixed).
set -eEuo pipefail   # -E: the ERR trap of `up` also fires inside its functions

SUBNET=10.77.0
REGISTRY=/run/loom-netns-cluster     # TAG -> DIR of clusters that are (or may be) up
SLURMCTLD_PORT=16817                 # not Slurm's defaults, to stay clear of a system Slurm
SLURMD_PORT=16818

die() { echo "cluster.sh: $*" >&2; exit 1; }
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
have() { command -v "$1" >/dev/null 2>&1; }
addr() { echo "$SUBNET.$(($1 + 1))"; }

# Whether process $1 exists and is not a zombie (PID 1 may be slow to reap them).
alive() { local st; st=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }
# Sends TERM (then KILL) to the process in pid file $1 if its command name is $2.
kill_pidfile() {
  local f=$1 name=$2 pid i
  [ -s "$f" ] || return 0
  pid=$(cat "$f" 2>/dev/null) || return 0
  if [[ $pid =~ ^[0-9]+$ ]] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = "$name" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 20); do alive "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# Tears down everything of cluster TAG (DIR may be empty when unknown). Never fails.
teardown() {
  local tag=$1 dir=$2 ns f i pids link
  if [ -n "$dir" ]; then
    for f in "$dir"/slurm/node*/slurmd.pid; do [ -e "$f" ] && kill_pidfile "$f" slurmd; done
    kill_pidfile "$dir/slurm/slurmctld.pid" slurmctld
    for f in "$dir"/munge/*.pid; do [ -e "$f" ] && kill_pidfile "$f" munged; done
  fi
  # Every process inside a node namespace (sshd, slurmd, slurmstepd, leftovers of jobs) dies.
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${tag}[0-9]+\$" || true); do
    for i in $(seq 30); do
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [ -n "$pids" ] || break
      kill -KILL $pids 2>/dev/null || true
      sleep 0.1
    done
    ip netns del "$ns" 2>/dev/null || true
  done
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 |
                grep -E "^${tag}(v[0-9]+|br)\$" || true); do
    ip link del "$link" 2>/dev/null || true       # a veth's peer and its qdiscs go with it
  done
  rm -f "$REGISTRY/$tag"
}

# Reads DIR/cluster.env (written first thing by `up`): TAG, NODES, SLOTS, SLURM.
load() {
  DIR=$(realpath -m "$1")
  [ -f "$DIR/cluster.env" ] || die "$DIR: no cluster here (no cluster.env)"
  # shellcheck disable=SC1091
  . "$DIR/cluster.env"
}
node_arg() {
  [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$NODES" ] || die "no node $1 (1..$NODES)"
}
# The pid of node I's sshd listener: its namespaces are the node's namespaces.
anchor() {
  local pid
  pid=$(cat "$DIR/node$1/sshd.pid" 2>/dev/null) || die "node $1: sshd is not running"
  [ -d "/proc/$pid" ] || die "node $1: sshd (pid $pid) is not running"
  echo "$pid"
}

check() {
  local slurm=${1:-} t=loomchk$$ p
  [ "$(id -u)" = 0 ] || { echo "not root"; exit 77; }
  for p in ip tc unshare nsenter ssh ssh-keygen /usr/sbin/sshd; do
    have "$p" || { echo "$p not installed (apt-get install openssh-server openssh-client iproute2)"; exit 77; }
  done
  if [ "$slurm" = --slurm ]; then
    for p in slurmctld slurmd munged sinfo sbatch srun; do
      have "$p" || have "/usr/sbin/$p" ||
        { echo "$p not installed (apt-get install slurmctld slurmd munge)"; exit 77; }
    done
  fi
  if ! { ip netns add "$t" && ip link add "${t}a" type veth peer name eth0 netns "$t"; } 2>/dev/null; then
    ip netns del "$t" 2>/dev/null || true
    echo "cannot create network namespaces and veth pairs here"; exit 77
  fi
  ip link del "${t}a" 2>/dev/null || true; ip netns del "$t"
}

# ERR trap of `up`: one line saying which step failed (and its log's last lines), then down.
up_failed() {
  trap - ERR
  echo "cluster.sh up: failed while $STEP (status $1)${LOG:+; last lines of its log(s):}" >&2
  for f in $LOG; do echo "  == $f"; tail -n 5 "$f" 2>/dev/null | sed 's/^/  /'; done >&2
  teardown "$2" "$DIR"
  exit 1
}

up() {
  local nodes=2 slots=2 rate="" slurm=0 tag=loomc i ns ip host old pids
  DIR=$(realpath -m "${1:?DIR missing}"); shift
  while [ $# -gt 0 ]; do
    case $1 in
      --nodes) nodes=${2:?}; shift 2 ;;
      --slots) slots=${2:?}; shift 2 ;;
      --rate) rate=${2:?}; shift 2 ;;
      --slurm) slurm=1; shift ;;
      --name) tag=${2:?}; shift 2 ;;
      *) usage ;;
    esac
  done
  [[ $nodes =~ ^[0-9]+$ ]] && [ "$nodes" -ge 1 ] && [ "$nodes" -le 200 ] || die "--nodes: 1..200"
  [[ $slots =~ ^[0-9]+$ ]] && [ "$slots" -ge 1 ] || die "--slots: a positive number"
  [[ $DIR =~ ^[-A-Za-z0-9/._+_]+$ ]] || die "DIR: only letters, digits, _ and -/.+ please (it goes into config files)"
  [[ $tag =~ ^[a-z][a-z0-9]{0,9}$ ]] || die "--name: up to 10 of [a-z0-9], starting with a letter"
  [ -z "$rate" ] || [[ $rate =~ ^[0-9.]+([kmgt]?(bit|bps))?$ ]] || die "--rate: e.g. 2gbit, 500mbit"
  local why; why=$(check "$([ $slurm = 1 ] && echo --slurm)") || die "$why"

  # Leftovers of an earlier cluster in DIR or under TAG go first.
  if [ -f "$DIR/cluster.env" ]; then (load "$DIR"; teardown "$TAG" "$DIR"); fi
  old=$(cat "$REGISTRY/$tag" 2>/dev/null || true)
  teardown "$tag" "$old"
  old=$(ip -o -4 addr show | awk -v a="$SUBNET.1/" 'index($4, a) == 1 {print $2}')
  [ -z "$old" ] || die "$SUBNET.1 is already on interface $old (another cluster up? run its down)"

  mkdir -p "$DIR" "$REGISTRY" /run/sshd
  rm -rf "$DIR"/node[0-9]* "$DIR/slurm" "$DIR/munge" "$DIR/ssh" "$DIR/local"
  printf 'TAG=%s\nNODES=%s\nSLOTS=%s\nSLURM=%s\n' "$tag" "$nodes" "$slots" "$slurm" > "$DIR/cluster.env"
  echo "$DIR" > "$REGISTRY/$tag"
  # From here on a failing step prints what failed and takes the half-built cluster down.
  STEP=start LOG=
  trap 'up_failed $? "$tag"' ERR

  STEP="generating keys and configs"
  mkdir -p "$DIR/ssh" "$DIR/local"
  ssh-keygen -q -t ed25519 -N '' -f "$DIR/ssh/host_ed25519_key" -C "$tag-host"
  ssh-keygen -q -t ed25519 -N '' -f "$DIR/ssh/id_ed25519" -C "$tag-client"
  cp "$DIR/ssh/id_ed25519.pub" "$DIR/ssh/authorized_keys"
  # All nodes share one host key; knowing it keeps ssh quiet at LogLevel INFO, the level at
  # which ssh says "Timeout, server 10.77.0.3 not responding." when a node's link dies.
  echo "$SUBNET.*,node* $(cut -d' ' -f1,2 "$DIR/ssh/host_ed25519_key.pub")" > "$DIR/ssh/known_hosts"
  { echo "127.0.0.1 localhost"; echo "$SUBNET.1 head"
    for i in $(seq "$nodes"); do echo "$(addr "$i") node$i"; done; } > "$DIR/hosts"
  { for i in $(seq "$nodes"); do printf 'Host node%s\n  HostName %s\n' "$i" "$(addr "$i")"; done
    cat <<EOF
Host *
  User root
  IdentityFile $DIR/ssh/id_ed25519
  IdentitiesOnly yes
  StrictHostKeyChecking yes
  UserKnownHostsFile $DIR/ssh/known_hosts
  GlobalKnownHostsFile /dev/null
  LogLevel INFO
  BatchMode yes
  ConnectTimeout 5
  ServerAliveInterval 1
  ServerAliveCountMax 3
EOF
  } > "$DIR/ssh_config"
  : > "$DIR/hostfile"; : > "$DIR/hostfile.names"; : > "$DIR/nodes"
  for i in $(seq "$nodes"); do
    echo "$(addr "$i") slots=$slots" >> "$DIR/hostfile"
    echo "node$i slots=$slots" >> "$DIR/hostfile.names"
    echo "$i node$i $(addr "$i") $tag$i" >> "$DIR/nodes"
  done
  cat > "$DIR/env.sh" <<EOF
# Source this to run Open MPI (and Slurm) jobs on the cluster in $DIR from the login node.
export LOOM_CLUSTER_DIR="$DIR"
export OMPI_MCA_plm_rsh_agent="ssh -F $DIR/ssh_config"
export OMPI_MCA_btl=tcp,vader,self
export OMPI_MCA_btl_tcp_if_include=$SUBNET.0/24
export OMPI_MCA_oob_tcp_if_include=$SUBNET.0/24
# The daemons' connections to mpirun notice a dead link within ~4 s (default: 8 min), so
# orted on a cut-off node kills its ranks instead of leaving them behind.
export OMPI_MCA_oob_tcp_keepalive_time=1
export OMPI_MCA_oob_tcp_keepalive_intvl=1
export OMPI_MCA_oob_tcp_keepalive_probes=3
export OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
EOF
  [ $slurm = 0 ] || echo "export SLURM_CONF=\"$DIR/slurm/slurm.conf\"" >> "$DIR/env.sh"

  STEP="creating bridge $tag""br"
  ip link add "${tag}br" type bridge
  ip addr add "$SUBNET.1/24" dev "${tag}br"
  ip link set "${tag}br" up
  local burst=""
  if [ -n "$rate" ]; then   # tbf's bucket: 4 ms at the rate, at least 64 KiB
    burst=$(echo "$rate" | awk '{ n = $0 + 0; u = substr($0, length(n "") + 1); m = 1
      if (u ~ /^k/) m = 1e3; if (u ~ /^m/) m = 1e6; if (u ~ /^g/) m = 1e9; if (u ~ /^t/) m = 1e12
      b = (u ~ /bps$/) ? n * m : n * m / 8; b = b / 250; if (b < 65536) b = 65536; printf "%d", b }')
  fi
  for i in $(seq "$nodes"); do
    ns=$tag$i ip=$(addr "$i") host=node$i
    STEP="creating node $i (namespace $ns, $ip)"
    mkdir -p "$DIR/node$i" "$DIR/node$i.local"
    ip netns add "$ns"
    ip link add "${tag}v$i" type veth peer name eth0 netns "$ns"
    ip link set "${tag}v$i" master "${tag}br" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    if [ -n "$rate" ]; then   # each direction of the node's link: node egress, bridge egress
      ip netns exec "$ns" tc qdisc replace dev eth0 root tbf rate "$rate" burst "$burst" latency 100ms
      tc qdisc replace dev "${tag}v$i" root tbf rate "$rate" burst "$burst" latency 100ms
    fi
    cat > "$DIR/node$i/sshd_config" <<EOF
ListenAddress $ip
HostKey $DIR/ssh/host_ed25519_key
PidFile $DIR/node$i/sshd.pid
AuthorizedKeysFile $DIR/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
MaxStartups 200
MaxSessions 200
# A session whose client stops answering (the link went down) ends within about 3 s.
ClientAliveInterval 1
ClientAliveCountMax 3
EOF
    STEP="starting sshd on node $i" LOG=$DIR/node$i/sshd.log
    # (Not `ip netns exec`: its fresh /sys lacks the cgroup mounts that slurmd needs. Here a
    # sysfs mounted inside the namespace shows the node's interfaces, and the host's cgroup
    # mounts are moved onto it.)
    mkdir -p "$DIR/node$i/cgroup"
    nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private sh -c '
      hostname "$1" && mount --rbind /sys/fs/cgroup "$2" && mount -t sysfs sysfs /sys &&
      mount --move "$2" /sys/fs/cgroup && mount --bind "$3" "$4" && mount --bind "$5" /etc/hosts &&
      exec /usr/sbin/sshd -f "$6" -E "$7"' sh "$host" "$DIR/node$i/cgroup" "$DIR/node$i.local" \
      "$DIR/local" "$DIR/hosts" "$DIR/node$i/sshd_config" "$DIR/node$i/sshd.log" \
      </dev/null >>"$DIR/node$i/sshd.log" 2>&1
  done
  STEP="waiting for the sshds"
  for i in $(seq "$nodes"); do   # sshd writes its pid file once it listens
    for _ in $(seq 50); do [ -s "$DIR/node$i/sshd.pid" ] && break; sleep 0.1; done
    LOG=$DIR/node$i/sshd.log; [ -s "$DIR/node$i/sshd.pid" ]
  done
  STEP="checking ssh to every node" LOG=
  pids=()
  for i in $(seq "$nodes"); do ssh -F "$DIR/ssh_config" "node$i" true </dev/null & pids+=($!); done
  for i in "${pids[@]}"; do wait "$i"; done

  [ $slurm = 0 ] || slurm_up "$tag" "$nodes" "$slots"
  trap - ERR
  echo "cluster $tag up: $nodes nodes x $slots slots${rate:+, $rate links}$([ $slurm = 1 ] && echo ', slurm'); source $DIR/env.sh"
}

slurm_up() {
  local tag=$1 nodes=$2 slots=$3 s=$DIR/slurm m=$DIR/munge i state
  # Every host runs its own munged, as on a real cluster (one munged for all would reject a
  # credential forwarded from node to node as replayed). Its socket is in DIR/local, which is
  # private to each node (and the head's own folder in the root namespace).
  mkdir -p "$s" "$m" "$DIR/local/.munge"
  dd if=/dev/urandom of="$m/munge.key" bs=1024 count=1 status=none; chmod 400 "$m/munge.key"
  local sock=$DIR/local/.munge/munge.socket
  # (DIR has no blanks, so these expansions may be split.)
  munged_args() { echo --force --socket="$sock" --key-file="$m/munge.key" \
    --pid-file="$m/$1.pid" --log-file="$m/$1.log" --seed-file="$m/$1.seed"; }
  STEP="starting munged on the head" LOG=$m/head.log
  # shellcheck disable=SC2046
  munged $(munged_args head) </dev/null >>"$m/head.log" 2>&1
  for i in $(seq "$nodes"); do
    STEP="starting munged on node $i" LOG=$m/node$i.log
    # shellcheck disable=SC2046
    nsenter -t "$(anchor "$i")" -n -u -m -- sh -c 'mkdir -p "$1" && shift && exec munged "$@"' \
      sh "$DIR/local/.munge" $(munged_args "node$i") </dev/null >>"$m/node$i.log" 2>&1
  done
  STEP="writing slurm.conf" LOG=
  { cat <<EOF
ClusterName=$tag
SlurmctldHost=head($SUBNET.1)
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthInfo=socket=$sock
TmpFS=$DIR/local
SlurmUser=root
StateSaveLocation=$s/state
SlurmctldPidFile=$s/slurmctld.pid
SlurmctldLogFile=$s/slurmctld.log
SlurmdSpoolDir=$s/%n/spool
SlurmdPidFile=$s/%n/slurmd.pid
SlurmdLogFile=$s/%n/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmix
PropagateResourceLimits=NONE
ReturnToService=2
SlurmdTimeout=10
MessageTimeout=5
InactiveLimit=10
KillWait=2
MinJobAge=30
EOF
    for i in $(seq "$nodes"); do
      echo "NodeName=node$i NodeAddr=$(addr "$i") NodeHostname=node$i CPUs=$slots State=UNKNOWN"
    done
    echo "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } > "$s/slurm.conf"
  mkdir -p "$s/state"
  for i in $(seq "$nodes"); do mkdir -p "$s/node$i/spool"; done
  export SLURM_CONF=$s/slurm.conf
  STEP="starting slurmctld" LOG=$s/slurmctld.log   # in a uts namespace with hostname `head`
  unshare --uts sh -c 'hostname head && exec slurmctld -f "$1"' sh "$SLURM_CONF" \
    </dev/null >>"$s/slurmctld.log" 2>&1
  for i in $(seq "$nodes"); do
    STEP="starting slurmd on node $i" LOG=$s/node$i/slurmd.log
    nsenter -t "$(anchor "$i")" -n -u -m -- slurmd -f "$SLURM_CONF" -N "node$i" \
      </dev/null >>"$s/node$i/slurmd.log" 2>&1
  done
  STEP="waiting for all nodes to be idle in sinfo" LOG="$s/slurmctld.log $(echo "$s"/node*/slurmd.log)"
  local end=$((SECONDS + 30))
  while [ $SECONDS -lt $end ]; do
    state=$(sinfo -h -N -o '%t' 2>/dev/null | sort | uniq -c | awk '{printf "%s %s ", $1, $2}') || true
    [ "$state" = "$nodes idle " ] && return 0
    sleep 0.2
  done
  STEP="$STEP (30 s; sinfo: ${state:-no answer})"
  false
}

cmd=${1:-}; [ $# -gt 0 ] && shift
case $cmd in
  up) [ $# -ge 1 ] || usage; up "$@" ;;
  down)
    [ $# -eq 1 ] || usage
    DIR=$(realpath -m "$1")
    if [ -f "$DIR/cluster.env" ]; then (load "$DIR"; teardown "$TAG" "$DIR"); fi ;;
  exec)
    [ $# -ge 3 ] && [ "$3" = -- ] || usage
    load "$1"; node_arg "$2"; pid=$(anchor "$2"); shift 3
    exec nsenter -t "$pid" -n -u -m --wd="$PWD" -- "$@" ;;
  link)
    [ $# -eq 3 ] && [[ $3 =~ ^(up|down)$ ]] || usage
    load "$1"; node_arg "$2"; ip link set "${TAG}v$2" "$3" ;;
  pids)
    [ $# -eq 2 ] || usage
    load "$1"; node_arg "$2"
    own=" $(cat "$DIR/node$2/sshd.pid" "$DIR/slurm/node$2/slurmd.pid" "$DIR/munge/node$2.pid" 2>/dev/null | tr '\n' ' ' || true) "
    for p in $(ip netns pids "$TAG$2"); do [[ $own == *" $p "* ]] || echo "$p"; done ;;
  check) check "${1:-}" ;;
  *) usage ;;
esac
