package datapath_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestDatapathsArePeers: the two datapaths share plumbing through
// datapath/plumb; neither imports the other (tests included), and plumb
// imports neither.
func TestDatapathsArePeers(t *testing.T) {
	const mod = "github.com/fabricnet/fabric/datapath/"
	for dir, banned := range map[string][]string{
		"ebpf":   {mod + "kernel"},
		"kernel": {mod + "ebpf", "github.com/fabricnet/fabric/bpf"},
		"plumb":  {mod + "kernel", mod + "ebpf", "github.com/fabricnet/fabric/bpf"},
	} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("%s: no Go files (%v)", dir, err)
		}
		for _, f := range files {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range af.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				for _, b := range banned {
					if path == b || strings.HasPrefix(path, b+"/") {
						t.Errorf("%s imports %s", f, path)
					}
				}
			}
		}
	}
}
