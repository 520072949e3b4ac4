package netnstest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
)

// HashEcho serves one TCP connection: it echoes everything until the
// client half-closes, then sends the SHA-256 of what it received and
// returns (the caller closes c). Tests of a stream's integrity run
// CheckEcho against it.
func HashEcho(c net.Conn) {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return
		}
	}
	c.Write(h.Sum(nil))
}

// Stream is one client side of a HashEcho exchange, which may be sent in
// parts (Send) before it is finished (Finish).
type Stream struct {
	c    *net.TCPConn
	rng  *rand.ChaCha8
	sent [2]hashWriter // [0] everything sent, [1] echo expected of it
	n    int64
}

type hashWriter interface {
	io.Writer
	Sum([]byte) []byte
}

// NewStream starts an exchange on c whose bytes are pseudo-random from seed.
func NewStream(c *net.TCPConn, seed uint64) *Stream {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	return &Stream{c: c, rng: rand.NewChaCha8(key), sent: [2]hashWriter{sha256.New(), sha256.New()}}
}

// Send sends size bytes while reading their echo, and checks the echo.
func (s *Stream) Send(size int) error {
	werr := make(chan error, 1)
	go func() { werr <- s.write(size) }()
	got := sha256.New()
	if _, err := io.CopyN(got, s.c, int64(size)); err != nil {
		<-werr
		return fmt.Errorf("read echo: %w", err)
	}
	if err := <-werr; err != nil {
		return err
	}
	if want := s.sent[1].Sum(nil); !bytes.Equal(got.Sum(nil), want) {
		return fmt.Errorf("echo of %d bytes differs from what was sent", size)
	}
	s.sent[1] = sha256.New()
	return nil
}

func (s *Stream) write(size int) error {
	buf := make([]byte, 48<<10)
	for left := size; left > 0; {
		n := min(left, len(buf))
		s.rng.Read(buf[:n])
		s.sent[0].Write(buf[:n])
		s.sent[1].Write(buf[:n])
		if _, err := s.c.Write(buf[:n]); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		left -= n
	}
	s.n += int64(size)
	return nil
}

// Finish half-closes the connection and checks that the server's hash of
// the whole stream is that of what was sent, and that nothing follows it.
func (s *Stream) Finish() error {
	if err := s.c.CloseWrite(); err != nil {
		return fmt.Errorf("half-close: %w", err)
	}
	trailer, err := io.ReadAll(s.c)
	if err != nil {
		return fmt.Errorf("read hash: %w", err)
	}
	if want := s.sent[0].Sum(nil); !bytes.Equal(trailer, want) {
		return fmt.Errorf("server's hash of %d bytes is %x, want %x", s.n, trailer, want)
	}
	return nil
}

// CheckEcho sends size bytes to a HashEcho server on c, half-closes, and
// checks the echo and the server's hash.
func CheckEcho(c *net.TCPConn, size int, seed uint64) error {
	s := NewStream(c, seed)
	if err := s.Send(size); err != nil {
		return err
	}
	return s.Finish()
}
