package config

import (
	"errors"
	"strings"
	"testing"
)

func TestNetNSPrefix(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		ok     bool
	}{
		{"", true}, {"lab-n1-", true}, {"a_b.c", true},
		{"-x", false}, {".x", false}, {"a/b", false}, {"a b", false}, {strings.Repeat("p", 41), false},
	} {
		c := Defaults()
		c.NodeName = "n"
		c.NetNSPrefix = tc.prefix
		err := c.Validate()
		if tc.ok && err != nil {
			t.Errorf("prefix %q: %v", tc.prefix, err)
		}
		if !tc.ok && (!errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "netns-prefix")) {
			t.Errorf("prefix %q: got %v, want an invalid netns-prefix error", tc.prefix, err)
		}
	}
}
