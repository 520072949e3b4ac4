package main

import (
	"fmt"
	"testing"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

func TestInFlags(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&api.Error{Message: "ip cannot be given with network none: it assigns no addresses", Fields: []string{"ip", "network"}},
			"--ip cannot be given with --network none: it assigns no addresses"},
		// Only whole words: ip_range is not ip, a quoted value is not a field.
		{&api.Error{Message: `gateway and ip_range need subnet`, Fields: []string{"gateway", "ip_range", "subnet"}},
			"--gateway and --ip-range need --subnet"},
		{&api.Error{Message: `ip "ip" is not an IPv4 address (see ip_range)`, Fields: []string{"ip"}},
			`--ip "ip" is not an IPv4 address (see ip_range)`},
		{&api.Error{Message: "auto_remove without a command has nothing to wait for", Fields: []string{"auto_remove"}},
			"--rm without a command has nothing to wait for"},
		// No fields listed: the message is printed as it is.
		{&api.Error{Message: "network ip not found"}, "network ip not found"},
		// A wrapped rejection keeps its context.
		{fmt.Errorf("connect: %w", &api.Error{Message: "ports %s clash", Fields: []string{"ports"}}), "connect: -p %s clash"},
		{fmt.Errorf("not from the agent: ip"), "not from the agent: ip"},
	} {
		if got := inFlags(tc.err); got != tc.want {
			t.Errorf("inFlags(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// The agent's rejection reaches the user in fabricctl's terms.
func TestAgentRejectionInFlags(t *testing.T) {
	a := newFakeAgent(t)
	a.reject["POST /v1/sandboxes"] = &api.Error{Message: "ip cannot be given with network none: it assigns no addresses", Code: api.CodeInvalid, Fields: []string{"ip", "network"}}
	r := a.ctl(t, "run", "-d", "--network", "none", "--ip", "10.1.0.5", "--", "true")
	if want := "Error: --ip cannot be given with --network none: it assigns no addresses\n"; r.code != exitFailure || r.stderr != want {
		t.Errorf("exit %d, stderr %q, want 1 and %q", r.code, r.stderr, want)
	}
}
