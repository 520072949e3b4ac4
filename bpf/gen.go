package bpf

// The C programs include <linux/bpf.h>, whose <asm/types.h> lives in the
// multiarch directory on Debian and Ubuntu; clang -target bpf does not search
// it. Only little-endian objects are generated: fabric runs on amd64/arm64.
//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror" -type endpoint -type network -type counter -type direction -type verdict -type reason -type ct_dir -type ct_kind -type host_policy -type ct_pending -type ct_stat endpoint endpoint.c -- -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror" sock sock.c -- -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror" -type endpoint -type network -type counter -type direction -type verdict -type reason -type ct_dir -type ct_kind uplink uplink.c -- -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror" tunnel tunnel.c -- -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror" -type redir_key -type redir_mode -type redir_stat -type redir_settings sockredir sockredir.c -- -I/usr/include/x86_64-linux-gnu
