#!/bin/sh
# Forms docker-compose.cluster.yml's Redis Cluster once: the nodes of REDIS_CLUSTER_NODES as
# masters, REDIS_CLUSTER_REPLICAS (default 1) replicas each. A cluster already formed (the stack
# restarted) is left as it is, so this runs on every `up`. Waits until every node reports
# cluster_state:ok, so services that depend on it start against a working cluster.
set -eu
nodes=$(printf '%s' "${REDIS_CLUSTER_NODES:?set REDIS_CLUSTER_NODES to host:port,host:port,...}" | tr ',' ' ')
replicas=${REDIS_CLUSTER_REPLICAS:-1}
tries=${REDIS_CLUSTER_INIT_TRIES:-60}

say() { printf 'redis-cluster-init: %s\n' "$*" >&2; }
host() { printf '%s' "${1%:*}"; }
port() { printf '%s' "${1##*:}"; }
state() { redis-cli -h "$(host "$1")" -p "$(port "$1")" cluster info 2>/dev/null | tr -d '\r' | sed -n 's/^cluster_state://p'; }

for n in $nodes; do
  i=0
  until redis-cli -h "$(host "$n")" -p "$(port "$n")" ping >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt "$tries" ] || { say "$n does not answer PING"; exit 1; }
    sleep 1
  done
done

# redis-cli attaches each replica once the nodes have met; on a busy host a CLUSTER REPLICATE can
# come too early, fail, and leave that node a master without slots. Attach any such node to the
# master with the fewest replicas (what redis-cli meant to do), until none is left.
# Only right after forming: a formed cluster may hold an empty master on purpose (resharding).
attach_orphans() {
  i=0
  while :; do
    # Each node's own line (flagged myself) is current; other nodes learn a change by gossip.
    # Fields: id address flags master-id ping pong epoch link-state [slots...]
    own=""
    for n in $nodes; do
      own="$own$(redis-cli -h "$(host "$n")" -p "$(port "$n")" cluster nodes | tr -d '\r' | awk '$3 ~ /myself/')
"
    done
    orphan=$(printf '%s' "$own" | awk '$3 ~ /master/ && NF == 8 { print $1, $2; exit }')
    [ -n "$orphan" ] || return 0
    i=$((i + 1))
    [ "$i" -lt "$tries" ] || { say "node ${orphan%% *} is still a master without slots"; exit 1; }
    target=$(printf '%s' "$own" | awk '
      $3 ~ /master/ && NF > 8 { masters[$1] = 0 }
      $4 != "-" { replicas[$4]++ }
      END { for (m in masters) if (best == "" || replicas[m] + 0 < fewest) { best = m; fewest = replicas[m] + 0 }; print best }')
    addr=${orphan#* }
    addr=${addr%%@*}
    say "attaching ${orphan%% *} ($addr) as a replica of $target"
    redis-cli -h "$(host "$addr")" -p "$(port "$addr")" cluster replicate "$target" >&2 || true
    sleep 1
  done
}

first=${nodes%% *}
known=$(redis-cli -h "$(host "$first")" -p "$(port "$first")" cluster info | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')
if [ "$known" -gt 1 ]; then
  say "already formed ($known nodes known to $first)"
else
  # CLUSTER MEET takes addresses, not names: resolve each service name.
  addrs=""
  for n in $nodes; do
    ip=$(getent hosts "$(host "$n")" | awk '{ print $1; exit }')
    [ -n "$ip" ] || { say "cannot resolve $(host "$n")"; exit 1; }
    addrs="$addrs $ip:$(port "$n")"
  done
  say "forming a cluster of$addrs with $replicas replica(s) per master"
  # shellcheck disable=SC2086 # one argument per address
  redis-cli --cluster create $addrs --cluster-replicas "$replicas" --cluster-yes >&2
  attach_orphans
fi


for n in $nodes; do
  i=0
  until [ "$(state "$n")" = ok ]; do
    i=$((i + 1))
    [ "$i" -lt "$tries" ] || { say "$n reports cluster_state:$(state "$n")"; exit 1; }
    sleep 1
  done
done
say "cluster_state:ok on every node"
