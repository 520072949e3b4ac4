// Package dns is fabric's embedded DNS server: the resolver every sandbox
// reaches at 127.0.0.11:53 (UDP and TCP), as Docker's embedded DNS, without
// its failures (a resolver lost after a restart, timeouts under load, names
// of removed containers lingering).
//
// The agent owns the lifecycle. Attach opens the two sockets inside a
// sandbox's network namespace (lo must be up) and is idempotent, so the
// agent calls it when it creates a sandbox and again for every sandbox when
// it starts; Detach closes them when the sandbox goes; SetRecords replaces
// the records of one owner (the agent's owners are endpoints and overlay
// networks) whenever sandboxes, endpoints, aliases or gossiped records
// change, and SetTable swaps in a whole new Table; ResolvConf is what the
// agent writes to /etc/netns/NAME/resolv.conf.
//
// A query is answered from the Table with the scope rule: a name resolves
// only for a querier that shares a network with its target, and the answer
// is the target's address on that shared network. A name out of the
// querier's scope is treated exactly like a name with no record at all
// (no NXDOMAIN that would reveal what exists elsewhere): it is forwarded
// to the upstream resolvers with a timeout and a bound on queries in
// flight, shared fairly among sandboxes, so a dead upstream gives
// SERVFAIL, not a hang, and one sandbox cannot starve the others. A
// sandbox the agent marks as not forwarding (only on internal networks)
// gets REFUSED instead. Names are single DNS labels (ValidLabel): a
// record named like an outside name (github.com) is dropped. Every
// sandbox's sockets are served by one event loop (an epoll set waited on
// through the Go runtime's poller), so a sandbox costs no goroutine, no
// OS thread and no buffers; UDP queries are read and answered in batches
// (recvmmsg/sendmmsg), local answers inline, because system calls, not
// DNS, are the cost of a local answer.
//
// The package must not know about the agent's store, its API, gossip or
// netlink: it sees only Records, namespace paths and upstream addresses.
// The forwarding sockets are opened by the agent's own goroutines, so in
// the agent's (host) namespace: upstreams on 127.0.0.0/8, such as
// systemd-resolved's 127.0.0.53, are reachable and kept.
package dns
