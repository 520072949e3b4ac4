package cluster

import (
	"fmt"
	"net/netip"
)

// NodeMeta is what every member tells the others about itself. It travels
// in memberlist's node metadata, which is limited to 512 bytes.
type NodeMeta struct {
	Name       string     // the node name (the memberlist name)
	Addr       netip.Addr // underlay address tunnels are sent to
	TunnelPort uint16     // VXLAN UDP port
	Datapath   string     // "ebpf" or "kernel"
	Version    string     // agent version
	// Identity is the node's ed25519 public key: its direct messages and
	// leave intents are signed with the private half (identity.go). Set
	// by the Cluster itself; what the agent passes is ignored.
	Identity [32]byte
}

const (
	metaVersion  = 2
	metaMaxBytes = 512 // memberlist.MetaMaxSize
	maxDatapath  = 16
	maxVersion   = 64
)

// encodeMeta returns the compact form: [version][name][addr][port][datapath][version][identity].
func encodeMeta(m NodeMeta) ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	e := &encoder{}
	e.u8(metaVersion)
	e.str(m.Name)
	e.addr(m.Addr)
	e.uvarint(uint64(m.TunnelPort))
	e.str(m.Datapath)
	e.str(m.Version)
	e.buf = append(e.buf, m.Identity[:]...)
	if len(e.buf) > metaMaxBytes {
		return nil, fmt.Errorf("%w: node metadata is %d bytes, limit %d", ErrInvalid, len(e.buf), metaMaxBytes)
	}
	return e.buf, nil
}

// decodeMeta decodes and validates metadata received from a peer.
func decodeMeta(b []byte) (NodeMeta, error) {
	if len(b) > metaMaxBytes {
		return NodeMeta{}, &decodeError{reason: dropOversized, msg: fmt.Sprintf("metadata of %d bytes", len(b))}
	}
	d := &decoder{buf: b}
	if v := d.u8(); d.err == nil && v != metaVersion {
		d.fail(dropVersion, "metadata version %d, want %d", v, metaVersion)
	}
	m := NodeMeta{
		Name:       d.nodeName(),
		Addr:       d.addr(),
		TunnelPort: d.u16("tunnel port"),
		Datapath:   d.str(maxDatapath, "datapath"),
		Version:    d.str(maxVersion, "version"),
	}
	copy(m.Identity[:], d.raw(len(m.Identity)))
	if err := d.finish(); err != nil {
		return NodeMeta{}, err
	}
	if err := m.validate(); err != nil {
		return NodeMeta{}, &decodeError{reason: dropInvalid, msg: err.Error()}
	}
	return m, nil
}

func (m NodeMeta) validate() error {
	if err := validNodeName(m.Name); err != nil {
		return fmt.Errorf("%w: metadata: %w", ErrInvalid, err)
	}
	if len(m.Datapath) > maxDatapath || checkText(m.Datapath) != nil {
		return fmt.Errorf("%w: metadata: datapath must be printable, at most %d bytes", ErrInvalid, maxDatapath)
	}
	if len(m.Version) > maxVersion || checkText(m.Version) != nil {
		return fmt.Errorf("%w: metadata: version must be printable, at most %d bytes", ErrInvalid, maxVersion)
	}
	return nil
}
