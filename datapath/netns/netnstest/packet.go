package netnstest

// Htons is v in network byte order, as packet sockets take their protocol
// (an EtherType) on this little-endian machine.
func Htons(v uint16) uint16 { return v<<8 | v>>8 }
