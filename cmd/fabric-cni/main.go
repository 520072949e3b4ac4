// fabric-cni is fabric's CNI plugin (type "fabric-cni"): containerd, the
// kubelet's path through CRI, nerdctl and podman's CNI backend attach
// their containers to fabric networks through it. It hands every command
// to fabricd over its socket; see cmd/internal/cni.
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/fabricnet/fabric/cmd/internal/cni"
)

var version = "dev"

func main() {
	p := &cni.Plugin{Stdout: os.Stdout, Stderr: os.Stderr}
	skel.PluginMainFuncs(p.Funcs(), cni.Versions, "fabric-cni "+version+": fabric's CNI plugin (hands ADD, DEL, CHECK, STATUS and GC to fabricd)")
}
