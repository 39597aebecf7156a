package scale

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"time"
)

// auditEvent is the part of an audit.k8s.io/v1 Event the count needs.
type auditEvent struct {
	Stage     string `json:"stage"`
	Verb      string `json:"verb"`
	UserAgent string `json:"userAgent"`
	User      struct {
		Username string              `json:"username"`
		Extra    map[string][]string `json:"extra"`
	} `json:"user"`
	SourceIPs  []string `json:"sourceIPs"`
	RequestURI string   `json:"requestURI"`
	ObjectRef  *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
	} `json:"objectRef"`
	Received time.Time `json:"requestReceivedTimestamp"`
}

// nodeNameExtra is the claim the apiserver adds to a pod-bound service
// account token's user: the node the pod runs on.
const nodeNameExtra = "authentication.kubernetes.io/node-name"

// ReqKey is one client on one node doing one verb on one resource.
type ReqKey struct {
	// Component is the user agent's program name (csi-provisioner, ...).
	Component string
	// Node is where the client runs: the node-name claim of its token, else
	// its source IP.
	Node     string
	Verb     string
	Resource string
}

// counted says whether e is the one record of its request: a watch (which
// completes only when it ends) is counted when its response starts, every
// other request when it completes.
func counted(e *auditEvent) bool {
	if e.Verb == "watch" {
		return e.Stage == "ResponseStarted"
	}
	return e.Stage == "ResponseComplete"
}

// component is the program name a client-go user agent starts with
// ("csi-provisioner/v0.0.0 (linux/amd64) kubernetes/$Format").
func component(ua string) string {
	c, _, _ := strings.Cut(ua, "/")
	c, _, _ = strings.Cut(c, " ")
	if c == "" {
		return "(none)"
	}
	return c
}

func (e *auditEvent) key() ReqKey {
	k := ReqKey{Component: component(e.UserAgent), Verb: e.Verb, Resource: "(non-resource)"}
	if n := e.User.Extra[nodeNameExtra]; len(n) > 0 {
		k.Node = n[0]
	} else if len(e.SourceIPs) > 0 {
		k.Node = e.SourceIPs[0]
	}
	if e.ObjectRef != nil {
		k.Resource = e.ObjectRef.Resource
		if e.ObjectRef.Subresource != "" {
			k.Resource += "/" + e.ObjectRef.Subresource
		}
	}
	if e.Verb == "list" && e.continued() {
		k.Resource += NextPages
	}
	return k
}

// NextPages marks the resource of a list request that continues a paged
// listing: "list persistentvolumes" counts listings (their first pages),
// "list persistentvolumes (next pages)" the rest of their pages.
const NextPages = " (next pages)"

// continued says whether the request asks for a later page of a listing.
func (e *auditEvent) continued() bool {
	u, err := url.Parse(e.RequestURI)
	return err == nil && u.Query().Get("continue") != ""
}

// CountRequests reads an audit log (JSON lines) and counts the requests
// received in [from, to) by client, node, verb and resource. Lines that are
// not audit events (a torn last line) are skipped and counted.
func CountRequests(r io.Reader, from, to time.Time) (map[ReqKey]int, int, error) {
	out := map[ReqKey]int{}
	bad := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	for sc.Scan() {
		var e auditEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Stage == "" {
			bad++
			continue
		}
		if !counted(&e) || e.Received.Before(from) || !e.Received.Before(to) {
			continue
		}
		out[e.key()]++
	}
	if err := sc.Err(); err != nil {
		return nil, bad, fmt.Errorf("read audit log: %w", err)
	}
	return out, bad, nil
}

// ComponentRequests is one component's requests over a window.
type ComponentRequests struct {
	Component string
	// Nodes is how many distinct nodes (or source IPs) it made requests from.
	Nodes int
	Total int
	// PerNodeMax is the most any one node's instance made.
	PerNodeMax int
	// ByVerb is "verb resource" → count, over all nodes.
	ByVerb map[string]int
}

// ByComponent folds counts into one row per component, sorted by name.
func ByComponent(counts map[ReqKey]int) []ComponentRequests {
	type acc struct {
		perNode map[string]int
		byVerb  map[string]int
		total   int
	}
	m := map[string]*acc{}
	for k, n := range counts {
		a := m[k.Component]
		if a == nil {
			a = &acc{perNode: map[string]int{}, byVerb: map[string]int{}}
			m[k.Component] = a
		}
		a.perNode[k.Node] += n
		a.byVerb[k.Verb+" "+k.Resource] += n
		a.total += n
	}
	var out []ComponentRequests
	for c, a := range m {
		r := ComponentRequests{Component: c, Nodes: len(a.perNode), Total: a.total, ByVerb: a.byVerb}
		for _, n := range a.perNode {
			r.PerNodeMax = max(r.PerNodeMax, n)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Component < out[j].Component })
	return out
}

// TopVerbs renders the n largest entries of byVerb as "verb resource ×count".
func TopVerbs(byVerb map[string]int, n int) string {
	type kv struct {
		k string
		v int
	}
	var l []kv
	for k, v := range byVerb {
		l = append(l, kv{k, v})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].v > l[j].v || (l[i].v == l[j].v && l[i].k < l[j].k) })
	var parts []string
	for i, e := range l {
		if i == n {
			break
		}
		parts = append(parts, fmt.Sprintf("%s ×%d", e.k, e.v))
	}
	return strings.Join(parts, ", ")
}

// LeaseRates are one leader-electing component's Lease requests over a
// window: the leader GETs and UPDATEs the Lease every retry period, every
// other instance only GETs it, once per retry period times client-go's
// jitter (1 to 2.2).
type LeaseRates struct {
	Leaders, Others int
	// LeaderPerSec is the leader's Lease requests per second (get and
	// update); OtherGetPerSec the GETs per second of one non-leader, mean
	// over them.
	LeaderPerSec, OtherGetPerSec float64
}

// leaseRates tells the leader from the others by its Lease updates (an
// instance that updated the Lease in the window led for part of it).
func leaseRates(counts map[ReqKey]int, component string, seconds float64) LeaseRates {
	type node struct{ get, update int }
	nodes := map[string]*node{}
	for k, n := range counts {
		if k.Component != component || k.Resource != "leases" {
			continue
		}
		nd := nodes[k.Node]
		if nd == nil {
			nd = &node{}
			nodes[k.Node] = nd
		}
		switch k.Verb {
		case "get":
			nd.get += n
		case "update":
			nd.update += n
		}
	}
	var r LeaseRates
	var leader, others int
	for _, nd := range nodes {
		if nd.update > 0 {
			r.Leaders++
			leader += nd.get + nd.update
		} else {
			r.Others++
			others += nd.get
		}
	}
	if seconds <= 0 {
		return r
	}
	if r.Leaders > 0 {
		r.LeaderPerSec = float64(leader) / float64(r.Leaders) / seconds
	}
	if r.Others > 0 {
		r.OtherGetPerSec = float64(others) / float64(r.Others) / seconds
	}
	return r
}
