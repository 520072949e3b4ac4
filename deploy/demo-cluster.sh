#!/usr/bin/env bash
# fabric demo: a 3-host fabric on one machine. `fabricctl lab up` builds three
# "hosts" (network namespaces on an underlay bridge), each running its own
# fabricd; they gossip into one cluster. An overlay network created on one
# host appears on all; sandboxes on different hosts talk across VXLAN.
#
# Nothing on the real host is touched; everything is removed at the end
# (KEEP=1 keeps the lab for poking around; CLEAN=1 only removes it).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}
LAB=${LAB:-fdemo}
DATAPATH=${DATAPATH:-auto}
export PATH="$PWD/$BIN:$PATH"
. deploy/demo-lib.sh # say, show
lab() { fabricctl lab --name "$LAB" "$@"; }
on() { local n=$1; shift; fabricctl --socket "/run/fabric/lab/$LAB/$n/fabricd.sock" "$@"; }

cleanup() { lab down >/dev/null 2>&1 || lab down || true; }
[ "$(id -u)" = 0 ] || { echo "the demo needs root (network namespaces, links, eBPF)" >&2; exit 1; }
cleanup
[ -n "${CLEAN:-}" ] && exit 0
[ -z "${KEEP:-}" ] && trap cleanup EXIT

say "A gossip key: the agents encrypt and authenticate everything they tell each other"
KEYDIR=$(mktemp -d)
[ -z "${KEEP:-}" ] && trap 'cleanup; rm -rf "$KEYDIR"' EXIT
show fabricctl cluster key generate "$KEYDIR/gossip.key"

say "Three hosts n1, n2, n3 on an underlay 10.99.0.0/24, one fabricd each, joined into a cluster"
show lab up --nodes 3 --datapath "$DATAPATH" --secret-file "$KEYDIR/gossip.key"
show lab status

say "An overlay network, created on n1: it exists on every host"
show on n1 network create -d overlay --subnet 10.77.0.0/16 mesh
for n in n2 n3; do
  for _ in $(seq 50); do on "$n" network inspect mesh >/dev/null 2>&1 && break; sleep 0.1; done
done
show on n3 network ls

say "A web server called 'web' on every host, on the overlay network (n2's also published on port 8080)"
# Sandbox names are per host: each node's "web" has its own namespace,
# /var/run/netns/$LAB-nI-web (the lab runs its agents with --netns-prefix).
for n in n1 n2 n3; do
  extra=()
  [ "$n" = n2 ] && extra=(-p 8080:80)
  show on "$n" run -d --name web --network mesh "${extra[@]}" -- python3 -m http.server 80
done
ipof() { on "$1" sandbox inspect web | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["endpoints"][0]["ip"].split("/")[0])'; }
declare -A IP
for n in n1 n2 n3; do IP[$n]=$(ipof "$n"); echo "web on $n: ${IP[$n]} (namespace $LAB-$n-web)"; done
for n in n1 n2 n3; do
  for _ in $(seq 50); do ip netns exec "$LAB-$n-web" ss -ltn | grep -q ':80 ' && break; sleep 0.1; done
done

fetch() { # fetch FROM-SANDBOX URL
  ip netns exec "$1" python3 -c "
import sys, time, urllib.request
for i in range(50):
    try:
        r = urllib.request.urlopen('$2', timeout=2); print('HTTP', r.status, 'from $2, as seen from $1'); sys.exit(0)
    except Exception as e:
        err = e; time.sleep(0.1)
sys.exit('no answer from $2: %s' % err)"
}
say "Every sandbox reaches the others across hosts (VXLAN between the hosts)"
for a in n1 n2 n3; do
  for b in n1 n2 n3; do
    [ "$a" = "$b" ] && continue
    show fetch "$LAB-$a-web" "http://${IP[$b]}/"
  done
done

say "n2's published port, from host n1 over the underlay"
n2addr=$(lab status -o json | python3 -c 'import json,sys; print([n["ip"] for n in json.load(sys.stdin)["nodes"] if n["id"]=="n2"][0])')
show fabricctl lab --name "$LAB" exec n1 -- python3 -c "import urllib.request; print('HTTP', urllib.request.urlopen('http://$n2addr:8080/', timeout=3).status, 'from $n2addr:8080')"

say "What n1 forwards to: the remote endpoints of 'mesh'"
on n1 network inspect mesh | python3 -c 'import json,sys; [print("  %(ip)s  mac %(mac)s  on node %(node)s" % r) for r in json.load(sys.stdin)[0].get("remotes", [])]'

say "Status of n1 (the cluster section lists every member)"
show on n1 status
[ -n "${KEEP:-}" ] && echo "KEEP=1: lab $LAB left running; 'fabricctl lab --name $LAB exec n1 -- fabricctl status'; remove with CLEAN=1 $0"
echo
echo "demo OK"
