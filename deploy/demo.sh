#!/usr/bin/env bash
# fabric demo: one host, three networks, sandboxes talking (and not talking).
#
# The agent runs with default settings, but inside a throw-away "host"
# network namespace (fabdemo-host) joined to an "outside" namespace
# (fabdemo-out) by a veth uplink, so the demo never touches your real host's
# interfaces or firewall. Everything is removed at the end (KEEP=1 keeps it
# for poking around; run the script again with CLEAN=1 to remove it).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
H=fabdemo-host O=fabdemo-out
DIR=/run/fabric-demo
SOCK=$DIR/fabricd.sock
ctl() { "$BIN/fabricctl" --socket "$SOCK" "$@"; }
. deploy/demo-lib.sh # say, show

cleanup() {
  if [ -S "$SOCK" ]; then
    for s in demo-web demo-db demo-client; do ctl sandbox rm "$s" >/dev/null 2>&1 || true; done
  fi
  if [ -f "$DIR/fabricd.pid" ]; then kill "$(cat "$DIR/fabricd.pid")" 2>/dev/null || true; sleep 0.5; fi
  for n in demo-web demo-db demo-client $H $O; do
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$n" 2>/dev/null || true
  done
  rm -rf "$DIR" /sys/fs/bpf/fabric-demo
}
[ "$(id -u)" = 0 ] || { echo "the demo needs root (network namespaces, links, nftables)" >&2; exit 1; }
cleanup
[ -n "${CLEAN:-}" ] && exit 0
[ -z "${KEEP:-}" ] && trap cleanup EXIT

say "A host namespace with an uplink (192.0.2.1) and an outside peer (192.0.2.2)"
ip netns add $H; ip netns add $O
ip link add up0 netns $H type veth peer name out0 netns $O
ip -n $H addr add 192.0.2.1/24 dev up0; ip -n $H link set up0 up; ip -n $H link set lo up
ip -n $O addr add 192.0.2.2/24 dev out0; ip -n $O link set out0 up; ip -n $O link set lo up
ip -n $H route add default via 192.0.2.2

say "Start fabricd with defaults (own state dir and socket for the demo)"
mkdir -p "$DIR"; : > "$DIR/fabric.yaml"
nsenter --net=/var/run/netns/$H "$BIN/fabricd" --config "$DIR/fabric.yaml" \
  --state-dir "$DIR/state" --socket "$SOCK" --bpf-root /sys/fs/bpf/fabric-demo --node-name demo-host >"$DIR/fabricd.log" 2>&1 &
echo $! > "$DIR/fabricd.pid"
for _ in $(seq 100); do ctl status >/dev/null 2>&1 && break; sleep 0.1; done
show ctl status

say "Networks: the default 'bridge', a 'front' network and an internal 'back' network"
show ctl network create --subnet 10.88.1.0/24 front
show ctl network create --subnet 10.88.2.0/24 --internal back
show ctl network ls

say "Sandboxes: a web server on front (port 80 published as 8080) and back, a db on back, a client on bridge"
show ctl run -d --name demo-web --network front -p 8080:80 -- python3 -m http.server 80
show ctl network connect --alias web back demo-web
show ctl run -d --name demo-db --network back -- sleep infinity
show ctl run -d --name demo-client -- sleep infinity
show ctl sandbox ls
show ctl endpoint ls
web_back=$(ctl sandbox inspect demo-web | python3 -c 'import json,sys; print([e["ip"] for e in json.load(sys.stdin)[0]["endpoints"] if e["network"]=="back"][0].split("/")[0])')
web_front=${web_back/10.88.2./10.88.1.}
for _ in $(seq 50); do ip netns exec demo-web ss -ltn | grep -q ':80 ' && break; sleep 0.1; done

say "demo-db reaches demo-web over the internal network 'back'"
show ip netns exec demo-db ping -c 2 -W 1 "$web_back"

say "...and finds it by name: the embedded DNS server (127.0.0.11) knows names and aliases"
show ip netns exec demo-db getent hosts web
show ip netns exec demo-db getent hosts demo-web

say "demo-client (on 'bridge') cannot reach demo-web's 'front' address: networks are isolated"
if ip netns exec demo-client ping -c 1 -W 1 "$web_front" >/dev/null; then echo "UNEXPECTED: reached it"; exit 1; else echo "no reply, as expected"; fi

say "...but the published port is open to everyone: from the outside, the host, and other sandboxes"
fetch() { ip netns exec "$1" python3 -c "import urllib.request,sys; r=urllib.request.urlopen('http://$2/', timeout=3); print('HTTP', r.status, 'from', '$2', 'as seen from $1')"; }
show fetch $O 192.0.2.1:8080
show fetch $H 127.0.0.1:8080
show fetch demo-client 192.0.2.1:8080

say "Egress from a sandbox is masqueraded to the host's address; 'back' has no egress"
ip netns exec $O python3 -c "
import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 9000)); s.listen()
s.settimeout(10); c,a=s.accept(); c.sendall(('outside saw you as %s\n' % a[0]).encode()); c.close()" &
listener=$!
sleep 0.3
show ip netns exec demo-client python3 -c "import socket; s=socket.create_connection(('192.0.2.2',9000),3); print(s.recv(100).decode().strip())"
if ip netns exec demo-db python3 -c "import socket; socket.create_connection(('192.0.2.2',9000),2)" 2>/dev/null; then echo "UNEXPECTED: egress from internal network"; exit 1; else echo "demo-db (internal 'back' only): no route out, as expected"; fi
wait $listener || true

say "Status"
show ctl status
[ -n "${KEEP:-}" ] && echo "KEEP=1: left running; socket $SOCK; remove with CLEAN=1 $0"
echo
echo "demo OK"
