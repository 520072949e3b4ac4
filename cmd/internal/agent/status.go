package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/fabricnet/fabric/cmd/internal/api"
)

// Status summarises the agent. It takes no lock a change holds across a
// slow call: the counts come from the core's maps under Agent.view, the
// rest from health, dnsRecords and clusterGlue, each under its own lock.
func (a *Agent) Status(ctx context.Context) api.Status {
	a.view.RLock()
	nNet, nSb, nEp := len(a.networks), len(a.sandboxes), len(a.endpoints)
	unhealthy := a.healthWarnings()
	a.view.RUnlock()
	warnings := append(a.health.lasting(), unhealthy...)
	warnings = append(warnings, a.health.eventWarnings(time.Now())...)
	warnings = append(warnings, a.glue.conflictWarnings()...)
	dnsSt := a.dnsStatus()
	clusterSt := a.clusterStatus()
	if clusterSt != nil {
		warnings = append(warnings, clusterSt.Problems...)
		for _, m := range clusterSt.Members {
			if m.State != "alive" {
				warnings = append(warnings, fmt.Sprintf("cluster member %s is %s (since %s)", m.Name, m.State, m.Since))
			}
		}
	}
	if dnsSt != nil && len(dnsSt.Errors) > 0 {
		warnings = append(warnings, fmt.Sprintf("embedded DNS not running in %d sandbox(es)", len(dnsSt.Errors)))
	}
	ds := a.dp.Status(ctx)
	return api.Status{
		Version: Version, Node: a.opts.NodeName, Started: a.started.UTC().Format(time.RFC3339),
		Uptime: time.Since(a.started).Round(time.Second).String(), Datapath: ds.Name, Details: ds.Details,
		Networks: nNet, Sandboxes: nSb, Endpoints: nEp, Warnings: append(warnings, ds.Warnings...),
		DNS: dnsSt, Cluster: clusterSt,
	}
}
