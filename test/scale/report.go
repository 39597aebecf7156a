package scale

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// perNode are the components that run once per node; dhpp-controller runs
// once per cluster.
var perNode = map[string]bool{"dhpp-driver": true, "csi-provisioner": true, "csi-resizer": true, "csi-snapshotter": true}

func mib(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }

// Markdown writes the report's tables.
func Markdown(w io.Writer, r *Report) {
	fmt.Fprintf(w, "Scale run of %s, %d nodes, %s, load average %s before the cluster came up and %s at the end; measured for %s, %s in all (cluster up, install and down included).\n\n",
		r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Nodes, r.Machine, r.LoadBefore, r.LoadAfter, r.Duration.Round(1e9), r.Total.Round(1e9))
	fmt.Fprintf(w, "Command: `%s`\n\n", r.Command)
	for _, name := range []string{"dhpp-driver", "csi-provisioner", "csi-resizer", "csi-snapshotter"} {
		fmt.Fprintf(w, "- %s args: `%s`\n", name, strings.Join(r.DaemonSetArgs[name], " "))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Steady state (per process; requests per node = per instance):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| PVCs / PVs | component | procs | RSS mean / max MiB | CPU mean / max mcores | req/s per node mean / max | requests in the window |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---|")
	for _, lv := range r.Levels {
		reqs := map[string]ComponentRequests{}
		for _, q := range lv.Steady.Requests {
			reqs[q.Component] = q
		}
		for _, p := range lv.Steady.Procs {
			q := reqs[p.Component]
			mean, mx := 0.0, 0.0
			if lv.Steady.Seconds > 0 && p.Processes > 0 {
				mean = float64(q.Total) / float64(p.Processes) / lv.Steady.Seconds
				mx = float64(q.PerNodeMax) / lv.Steady.Seconds
			}
			fmt.Fprintf(w, "| %d / %d | %s | %d | %s / %s | %.1f / %.1f | %.3f / %.3f | %s |\n",
				lv.Claims, lv.PVs, p.Component, p.Processes, mib(p.RSSMean), mib(p.RSSMax), p.CPUMean, p.CPUMax,
				mean, mx, TopVerbs(q.ByVerb, 4))
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Adding the objects (the churn every PVC/PV watcher receives):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| to PVCs / PVs | took: create / bound / quiet | events to one PVC+PV watcher | KiB to one watcher | bytes/event | apiserver watch events sent, PVC+PV (all watchers) | PVC / PV watchers | list of all PVCs+PVs KiB | CPU mcores mean: driver / provisioner / resizer |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---|---:|---|")
	for _, lv := range r.Levels {
		g := lv.Grow
		ev := g.PVC.Events + g.PV.Events
		by := g.PVC.Bytes + g.PV.Bytes
		per := int64(0)
		if ev > 0 {
			per = by / ev
		}
		pvc, pv := g.APIServer["persistentvolumeclaims"], g.APIServer["persistentvolumes"]
		cpu := map[string]float64{}
		for _, p := range g.Procs {
			cpu[p.Component] = p.CPUMean
		}
		fmt.Fprintf(w, "| %d / %d | %s / %s / +%s | %d | %d | %d | %.0f | %.0f / %.0f | %d | %.0f / %.0f / %.0f |\n",
			lv.Claims, lv.PVs, g.Create.Round(1e9), g.Duration.Round(1e9), lv.Settled.Round(1e9), ev, by>>10, per, pvc.Events+pv.Events,
			pvc.Watchers, pv.Watchers, lv.ListBytes>>10, cpu["dhpp-driver"], cpu["csi-provisioner"], cpu["csi-resizer"])
	}
	fmt.Fprintln(w)
	// The apiserver's watch size histogram is left out: its sum came to
	// ~75 bytes per PVC event (objects are ~1.3 KB), not the bytes sent.
	fmt.Fprintln(w, "Steady-state watch events from the apiserver, all watchers (events/s):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| PVCs / PVs | persistentvolumeclaims | persistentvolumes | csistoragecapacities | leases | events (all kinds) |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|")
	for _, lv := range r.Levels {
		st := lv.Steady
		cell := func(res string) string {
			a := st.APIServer[res]
			if st.Seconds == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2f", a.Events/st.Seconds)
		}
		fmt.Fprintf(w, "| %d / %d | %s | %s | %s | %s | %s |\n", lv.Claims, lv.PVs, cell("persistentvolumeclaims"),
			cell("persistentvolumes"), cell("csistoragecapacities"), cell("leases"), cell("events"))
	}
	fmt.Fprintln(w)
	runTable(w, r)
	projection(w, r)
}

// runTable writes the requests of the whole measurement, per instance, and
// the Lease polling it contains.
func runTable(w io.Writer, r *Report) {
	rw := r.Run
	if rw.Seconds <= 0 {
		return
	}
	fmt.Fprintf(w, "The whole measurement (%.0f s, all levels, from the end of the install's rollout): requests per instance:\n\n", rw.Seconds)
	fmt.Fprintln(w, "| component | instances | req/s per instance mean / max | requests, all instances |")
	fmt.Fprintln(w, "|---|---:|---:|---|")
	for _, q := range rw.Requests {
		if !perNode[q.Component] && q.Component != "dhpp-controller" {
			continue
		}
		fmt.Fprintf(w, "| %s | %d | %.3f / %.3f | %s |\n", q.Component, q.Nodes,
			float64(q.Total)/float64(max(q.Nodes, 1))/rw.Seconds, float64(q.PerNodeMax)/rw.Seconds, TopVerbs(q.ByVerb, 6))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Lease requests | leaders | others | per leader /s (get+update) | GETs per non-leader /s |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|")
	for _, comp := range []string{"csi-resizer", "dhpp-controller"} {
		l := rw.Leases[comp]
		fmt.Fprintf(w, "| %s | %d | %d | %.3f | %.3f |\n", comp, l.Leaders, l.Others, l.LeaderPerSec, l.OtherGetPerSec)
	}
	fmt.Fprintln(w)
	orphanLine(w, rw)
}

// orphanLine writes what dhpp-driver's periodic PV listing costs: the
// listings and their pages in the run, and the rate they make at the
// configured period (the run holds about one period, so a rate over the
// run itself would depend on where the listings fell).
func orphanLine(w io.Writer, rw RunWindow) {
	var drv ComponentRequests
	for _, q := range rw.Requests {
		if q.Component == "dhpp-driver" {
			drv = q
		}
	}
	lists := drv.ByVerb["list persistentvolumes"]
	pages := lists + drv.ByVerb["list persistentvolumes"+NextPages]
	if lists == 0 || rw.OrphanPeriod <= 0 {
		fmt.Fprintf(w, "dhpp-driver orphan check (every %s): no listing in the run (held %s after the last level).\n\n", rw.OrphanPeriod, rw.Held.Round(time.Second))
		return
	}
	perList := float64(pages) / float64(lists)
	fmt.Fprintf(w, "dhpp-driver orphan check (every %s, +≤10 %% jitter): %d listings in the run by %d drivers (held %s after the last level), %.1f pages (list calls) each: %.4f list calls/s per node at that period.\n\n",
		rw.OrphanPeriod, lists, drv.Nodes, rw.Held.Round(time.Second), perList, perList/rw.OrphanPeriod.Seconds())
}

// projection scales the last level's per-node figures to 100 and 1,000
// nodes: requests add up linearly; each node's provisioner is one more
// watcher of every PVC and PV change.
func projection(w io.Writer, r *Report) {
	if len(r.Levels) == 0 {
		return
	}
	lv := r.Levels[len(r.Levels)-1]
	var reqPerNode float64
	var rssPerNode int64
	for _, p := range lv.Steady.Procs {
		if !perNode[p.Component] {
			continue
		}
		rssPerNode += p.RSSMean
		for _, q := range lv.Steady.Requests {
			if q.Component == p.Component && lv.Steady.Seconds > 0 {
				reqPerNode += float64(q.Total) / float64(p.Processes) / lv.Steady.Seconds
			}
		}
	}
	g := lv.Grow
	perEvent := 0.0
	if ev := g.PVC.Events + g.PV.Events; ev > 0 {
		perEvent = float64(g.PVC.Bytes+g.PV.Bytes) / float64(ev)
	}
	fmt.Fprintf(w, "Projection from %d PVCs / %d PVs (per node: %.3f req/s, %s MiB RSS mean sum; %.0f bytes per PVC/PV watch event):\n\n",
		lv.Claims, lv.PVs, reqPerNode, mib(rssPerNode), perEvent)
	fmt.Fprintln(w, "| nodes | dhpp requests/s on the apiserver | dhpp memory, whole cluster | watch bytes/s per PVC or PV change/s |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|")
	for _, n := range []int{100, 1000} {
		fmt.Fprintf(w, "| %d | %.1f | %.1f GiB | %.0f KiB/s |\n", n, reqPerNode*float64(n), float64(rssPerNode)*float64(n)/(1<<30), perEvent*float64(n)/1024)
	}
}
