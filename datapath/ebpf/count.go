package ebpf

import "fmt"

// count is "1 thing" or "N things", for status lines.
func count(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}
