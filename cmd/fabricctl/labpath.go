package main

import (
	"os"
	"path/filepath"
	"strings"
)

// execEnvPath puts the directory of this fabricctl first on PATH of a
// command run with `lab exec`, so that `fabricctl …` in it is this very
// fabricctl even from a checkout (bin/fabricctl lab exec n2 -- fabricctl
// status), and returns that environment and argv with argv[0] resolved
// against it.
func execEnvPath(env, argv []string) ([]string, []string) {
	self, err := os.Executable()
	if err != nil {
		return env, argv
	}
	dir := filepath.Dir(self)
	path := ""
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
			continue
		}
		out = append(out, kv)
	}
	newPath := dir
	if path != "" {
		newPath += string(os.PathListSeparator) + path
	}
	out = append(out, "PATH="+newPath)
	if len(argv) > 0 && !strings.Contains(argv[0], "/") {
		for _, d := range filepath.SplitList(newPath) {
			p := filepath.Join(d, argv[0])
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
				argv = append([]string{p}, argv[1:]...)
				break
			}
		}
	}
	return out, argv
}
