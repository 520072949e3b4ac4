package api

import "testing"

func TestParsePort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Port
		bad  bool
	}{
		{in: "8080:80", want: Port{Proto: "tcp", HostPort: 8080, Port: 80}},
		{in: "8080:80/udp", want: Port{Proto: "udp", HostPort: 8080, Port: 80}},
		{in: "8080:80/TCP", want: Port{Proto: "tcp", HostPort: 8080, Port: 80}},
		{in: "127.0.0.1:8080:80", want: Port{Proto: "tcp", HostIP: "127.0.0.1", HostPort: 8080, Port: 80}},
		{in: "0.0.0.0:53:53/udp", want: Port{Proto: "udp", HostPort: 53, Port: 53}},
		{in: "80", bad: true},
		{in: "0:80", bad: true},
		{in: "65536:80", bad: true},
		{in: "80:x", bad: true},
		{in: "80:80/sctp", bad: true},
		{in: "::1:80:80", bad: true},
		{in: "1.2.3:80:80", bad: true},
		{in: "a:b:c:d", bad: true},
		{in: "", bad: true},
	} {
		got, err := ParsePort(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("ParsePort(%q) = %+v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParsePort(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if back, err := ParsePort(got.String()); err != nil || back != got {
			t.Errorf("round trip of %q via %q: %+v %v", tc.in, got.String(), back, err)
		}
	}
}
