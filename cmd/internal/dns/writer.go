package dns

import (
	"io"

	"github.com/miekg/dns"
)

// The server's dns.ResponseWriters (TCP, UDP batched, UDP direct) differ
// only in how they send bytes and which addresses they report; packing a
// message and the parts of the interface the server does not support are
// the same for all of them and live here.

// writeMsg packs m and sends it with w's Write: the WriteMsg of every
// writer here.
func writeMsg(w io.Writer, m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// noTSIG is embedded by the writers for what the server does not support:
// TSIG (no keys, so nothing to check) and Hijack (the server keeps the
// connection).
type noTSIG struct{}

func (noTSIG) TsigStatus() error   { return nil }
func (noTSIG) TsigTimersOnly(bool) {}
func (noTSIG) Hijack()             {}
