#!/usr/bin/env bash
# A throw-away, single-host Ceph cluster with one radosgw: the real S3 server of the tests.
#
#   scripts/rgw.sh start DIR   start 1 mon + 1 memstore OSD + 1 radosgw under DIR (wiped first);
#                              prints KEY=value lines (endpoint, keys, pids, CEPH_CONF) on stdout
#   scripts/rgw.sh stop DIR    stop what `start DIR` started (by pid file) and remove DIR
#
# Env: RGW_PORT (default 7480), MON_PORT (default 3300), RGW_ACCESS_KEY, RGW_SECRET_KEY,
#      RGW_MEMSTORE_BYTES (OSD capacity; memstore holds objects in RAM, so only what is stored
#      costs memory), RGW_LC_DEBUG_INTERVAL (seconds per lifecycle "day", and how often the
#      lifecycle thread runs; unset = real days).
# Debian packages: radosgw ceph-mon ceph-osd (.ci/run installs them). Loopback only, cephx off.
# Starts in about 1.5 s on 2 cores; the settings marked "speed" or "needed" below are why.
set -euo pipefail

cmd=${1:-}
DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

stop() {
  local pid
  for f in "$DIR"/run/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
  done
  # Give the daemons a moment, then make sure.
  for _ in $(seq 1 50); do
    local alive=0
    for f in "$DIR"/run/*.pid; do
      [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for f in "$DIR"/run/*.pid; do
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  return 0
}

if [ "$cmd" = stop ]; then
  stop
  rm -rf "$DIR"
  exit 0
fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

RGW_PORT=${RGW_PORT:-7480}
MON_PORT=${MON_PORT:-3300}
ACCESS_KEY=${RGW_ACCESS_KEY:-stowagetestaccesskey}
SECRET_KEY=${RGW_SECRET_KEY:-stowagetestsecretkey0123456789abcdef0123}
MEMSTORE_BYTES=${RGW_MEMSTORE_BYTES:-8589934592}

fail() {
  echo "rgw.sh: $*" >&2
  for f in "$DIR"/log/*; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
  stop
  exit 1
}

for tool in ceph-mon ceph-osd radosgw radosgw-admin monmaptool ceph; do
  command -v "$tool" >/dev/null || { echo "rgw.sh: $tool not found: apt-get install radosgw ceph-mon ceph-osd" >&2; exit 1; }
done

stop
rm -rf "$DIR"
mkdir -p "$DIR"/mon "$DIR"/osd "$DIR"/rgw "$DIR"/run "$DIR"/log
FSID=$(cat /proc/sys/kernel/random/uuid)
export CEPH_CONF="$DIR/ceph.conf"
lc=""
[ -n "${RGW_LC_DEBUG_INTERVAL:-}" ] && lc="rgw lc debug interval = $RGW_LC_DEBUG_INTERVAL"

cat >"$CEPH_CONF" <<CONF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$MON_PORT
public network = 127.0.0.0/8
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = $DIR/run
admin socket = $DIR/run/\$cluster-\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
mon data = $DIR/mon/\$cluster-\$id
osd data = $DIR/osd/\$cluster-\$id
# one OSD, objects in RAM, one copy
osd objectstore = memstore
memstore device bytes = $MEMSTORE_BYTES
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
osd op num shards = 1
osd op num threads per shard = 2
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
# speed: the mon batches map changes for 1 s by default, and the OSD's boot and every pool
# radosgw creates wait for one (13-17 s of start-up without these two)
paxos propose interval = 0.05
paxos min wait = 0.01

[client.rgw.s]
# needed: radosgw defaults to ms_mon_client_mode=secure, which with auth off loops for ever on
# "get_initial_auth_request returned -13"
ms mon client mode = crc
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw thread pool size = 64
# A deleted or overwritten object's data (past its 4 MiB head) is freed by radosgw's garbage
# collector, by default 2 h after the delete on an hourly pass; memstore holds it in RAM until
# then, so a run that writes and deletes GBs (the benches) filled the store and stalled.
rgw gc obj min wait = 30
rgw gc processor period = 10
$lc
CONF

monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$DIR/monmap" >/dev/null
ceph-mon --mkfs -i a --monmap "$DIR/monmap" >>"$DIR/log/mon.stderr" 2>&1 || fail "ceph-mon --mkfs failed"
ceph-mon -i a >>"$DIR/log/mon.stderr" 2>&1 || fail "ceph-mon did not start (port $MON_PORT taken?)"
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
OSD_ID=$(ceph --connect-timeout 20 osd new "$OSD_UUID" 2>>"$DIR/log/mon.stderr") || fail "ceph osd new failed"
mkdir -p "$DIR/osd/ceph-$OSD_ID"
ceph-osd -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" >>"$DIR/log/osd.stderr" 2>&1 || fail "ceph-osd --mkfs failed"
ceph-osd -i "$OSD_ID" >>"$DIR/log/osd.stderr" 2>&1 || fail "ceph-osd did not start"
timeout 60 radosgw -n client.rgw.s >>"$DIR/log/rgw.stderr" 2>&1 || fail "radosgw did not start (port $RGW_PORT taken?)"
radosgw-admin user create --uid=stowage-test --display-name=stowage-test \
  --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >/dev/null 2>>"$DIR/log/admin.stderr" || fail "radosgw-admin user create failed"

up=0
for _ in $(seq 1 600); do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$RGW_PORT/"; then up=1; break; fi
  sleep 0.1
done
[ "$up" = 1 ] || fail "radosgw is not answering on 127.0.0.1:$RGW_PORT after 60 s"

echo "S3_ENDPOINT=http://127.0.0.1:$RGW_PORT"
echo "S3_ACCESS_KEY_ID=$ACCESS_KEY"
echo "S3_SECRET_ACCESS_KEY=$SECRET_KEY"
echo "S3_REGION=us-east-1"
echo "CEPH_CONF=$CEPH_CONF"
echo "RGW_PIDS=$(cat "$DIR"/run/*.pid | tr '\n' ' ')"
