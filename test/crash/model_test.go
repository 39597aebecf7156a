package crash

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// outcome is what the test knows about one RPC.
type outcome int

const (
	// ok: the driver answered OK; the effect must be durable.
	ok outcome = iota
	// failed: the driver answered an error while it was running: the
	// call had no effect the test relies on.
	failed
	// uncertain: the call was in flight when the driver was killed; it
	// may or may not have taken effect, and retrying it must converge.
	uncertain
)

func (o outcome) String() string {
	return [...]string{"OK", "failed", "uncertain"}[o]
}

// tri is a fact about a volume: false, true, or unknown because the call
// that would change it was cut off by a kill.
type tri int

const (
	no tri = iota
	yes
	maybe
)

func (t tri) String() string { return [...]string{"no", "yes", "maybe"}[t] }

// event is one line of a volume's history.
type event struct {
	at      time.Duration // since the test started
	kill    int           // kills so far: which incarnation served the call
	what    string        // e.g. "CreateVolume(16Mi)" or "write f3 (12 KiB)"
	outcome outcome
	err     string
}

func (e event) String() string {
	s := fmt.Sprintf("  %8.3fs driver#%-3d %-46s %s", e.at.Seconds(), e.kill+1, e.what, e.outcome)
	if e.err != "" {
		s += ": " + e.err
	}
	return s
}

// file is data the test wrote through a published mount and fsynced: a
// file of that name, or for a block volume a range at offset off.
type file struct {
	name string
	off  int64
	size int
	sum  [32]byte // sha256
}

// vol is the model of one volume: what the driver has promised about it.
// A vol belongs to one worker while workers run, and to the checker while
// they are paused, so it needs no lock of its own.
type vol struct {
	name, pool, id string
	reqBytes       int64 // CreateVolume's required_bytes, for retries
	block          bool  // a raw block volume (loop pool): data at offsets

	exists  tri   // CreateVolume OK (yes) / in flight at a kill (maybe)
	deleted tri   // DeleteVolume OK (yes) / in flight at a kill (maybe)
	staged  tri   // NodeStageVolume OK, not unstaged since
	pub     tri   // NodePublishVolume OK, not unpublished since
	capMin  int64 // the size the driver confirmed
	capMax  int64 // the largest size an uncertain expand may have applied
	// pending is the call cut off by the last kill ("" if none): the
	// checker retries it after the restart, as a CO would.
	pending string
	// expandTo is the size of an expand cut off by a kill.
	expandTo int64
	// expandAt is where that expand was asked (target, or staging offline).
	expandAt string
	// growPending: a loop volume whose image grew while its filesystem
	// could not (mounted, no CAP_SYS_RESOURCE): the next stage grows it
	// offline. deferredTo is the size that expansion asked for; the
	// NodeExpandVolume after that stage completes it.
	growPending bool
	deferredTo  int64

	// source is what a restored volume is made from (CreateVolume's
	// content source); its files start as the snapshot's.
	source *csi.VolumeContentSource

	staging, target string // fixed per volume, as a kubelet's paths are
	files           []file
	fileSeq         int
	// broken: an unexpected answer was reported; the volume is left
	// alone from then on so that one bug is reported once.
	broken  bool
	history []event
}

// live reports whether the volume must be listed by the driver.
func (v *vol) live() bool { return v.exists == yes && v.deleted == no }

func (v *vol) String() string {
	return fmt.Sprintf("volume %s (pool %s): exists=%s deleted=%s staged=%s published=%s size=[%d,%d] files=%d",
		v.id, v.pool, v.exists, v.deleted, v.staged, v.pub, v.capMin, v.capMax, len(v.files))
}

// historyText renders the volume's operations for a failure message.
func (v *vol) historyText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n  history:\n", v)
	for _, e := range v.history {
		b.WriteString(e.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// stats counts outcomes per RPC and restart times for the summary line.
type stats struct {
	mu       sync.Mutex
	byRPC    map[string]*[3]int
	restarts []time.Duration
	// inflight counts what a create or delete cut off by a kill had done:
	// "create:present", "create:absent", "delete:present", "delete:absent".
	inflight map[string]int
	files    int
	// checks counts the checker's calls after restarts (retries of cut-off
	// calls, repeated stage/publish/create), by outcome.
	checks [3]int
	// outlived counts kills after which children of the driver outlived
	// it (a fork not yet exec'd, an umount in uninterruptible sleep);
	// outlivedMax is the longest they did.
	outlived    int
	outlivedMax time.Duration
}

func (s *stats) lingered(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d > 0 {
		s.outlived++
		s.outlivedMax = max(s.outlivedMax, d)
	}
}

func newStats() *stats {
	return &stats{byRPC: map[string]*[3]int{}, inflight: map[string]int{}}
}

func (s *stats) count(rpc string, o outcome) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.byRPC[rpc]
	if c == nil {
		c = new([3]int)
		s.byRPC[rpc] = c
	}
	c[o]++
}

func (s *stats) countCheck(o outcome) {
	s.mu.Lock()
	s.checks[o]++
	s.mu.Unlock()
}

func (s *stats) note(key string) {
	s.mu.Lock()
	s.inflight[key]++
	s.mu.Unlock()
}

// summary is the one-line result: kills, outcomes per RPC (ok/failed/
// uncertain), what in-flight creates and deletes had done, restart p50/max.
func (s *stats) summary(kills int, aimed map[string]int, elapsed time.Duration) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var rpcs []string
	for k := range s.byRPC {
		rpcs = append(rpcs, k)
	}
	sort.Strings(rpcs)
	var parts []string
	for _, k := range rpcs {
		c := s.byRPC[k]
		parts = append(parts, fmt.Sprintf("%s %d/%d/%d", k, c[ok], c[failed], c[uncertain]))
	}
	var inflight []string
	for _, k := range []string{"create:present", "create:absent", "delete:present", "delete:absent"} {
		inflight = append(inflight, fmt.Sprintf("%s=%d", k, s.inflight[k]))
	}
	var aims []string
	for _, k := range killKinds {
		aims = append(aims, fmt.Sprintf("%s=%d", k, aimed[k]))
	}
	r := append([]time.Duration(nil), s.restarts...)
	sort.Slice(r, func(i, j int) bool { return r[i] < r[j] })
	var p50, pmax time.Duration
	if len(r) > 0 {
		p50, pmax = r[len(r)/2], r[len(r)-1]
	}
	return fmt.Sprintf("crash loop: %d kills in %s (aimed: %s); worker calls ok/failed/uncertain: %s; in flight at a kill: %s; after-restart retries and repeats ok/failed: %d/%d; fsynced file reads checked: %d; children outlived the driver after %d kills (max %s); restart-to-ready p50 %s max %s",
		kills, elapsed.Round(100*time.Millisecond), strings.Join(aims, " "), strings.Join(parts, ", "), strings.Join(inflight, " "), s.checks[ok], s.checks[failed], s.files, s.outlived, s.outlivedMax.Round(time.Millisecond),
		p50.Round(time.Millisecond), pmax.Round(time.Millisecond))
}

// codeOf is the gRPC code of an RPC error (OK for nil).
func codeOf(err error) codes.Code { return status.Code(err) }
