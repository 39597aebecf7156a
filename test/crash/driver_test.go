package crash

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// readyTimeout bounds a start-up, recovery of every pool included.
const readyTimeout = 60 * time.Second

// buildDriver compiles cmd/dhpp-driver into dir, as `make build` does.
func buildDriver(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "dhpp-driver")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "github.com/dhpp-io/dhpp/cmd/dhpp-driver")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/dhpp-driver: %v\n%s", err, out)
	}
	return bin
}

// driverProc runs dhpp-driver as a subprocess, one incarnation at a time.
type driverProc struct {
	t      *testing.T
	bin    string
	args   []string
	sock   string
	logDir string
	n      int // incarnations started
	cur    atomic.Pointer[incarnation]
}

// incarnation is one run of the driver process and the CSI connection to it.
type incarnation struct {
	n      int
	cmd    *exec.Cmd
	log    string
	exited chan struct{} // closed when the process has been reaped
	err    error         // its exit status, valid after exited
	conn   *grpc.ClientConn
	ident  csi.IdentityClient
	ctl    csi.ControllerClient
	node   csi.NodeClient
	// killed is set just before the SIGKILL: an RPC of this incarnation
	// that fails from then on may or may not have taken effect.
	killed atomic.Bool
	// stopping is set before a deliberate SIGTERM.
	stopping atomic.Bool
	// started is when it was exec'd; listening and probed are the times
	// from then until the socket accepted and Probe answered ready, and
	// probes how many Probe calls that took.
	started           time.Time
	listening, probed time.Duration
	probes            int
}

func newDriverProc(t *testing.T, bin, workDir, nodeID string, pools []string) *driverProc {
	sock := filepath.Join(workDir, "csi", "csi.sock")
	args := []string{
		"--endpoint=unix://" + sock,
		"--node-id=" + nodeID,
		// Nothing may be purged while the test runs: the invariants look
		// at the trash, and a purge would hide a resurrected volume.
		"--trash-retention=24h",
		"--kubelet-registration=false",
		"--metrics-address=",
		"--v=2",
	}
	for _, p := range pools {
		args = append(args, "--pool="+p)
	}
	logDir := filepath.Join(workDir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &driverProc{t: t, bin: bin, args: args, sock: sock, logDir: logDir}
}

// start launches a new incarnation in its own process group (so a kill
// takes its mkfs/e2fsck children with it, as a container kill would) and
// waits until it answers Probe with ready. It returns the time from exec
// to ready.
func (d *driverProc) start() (time.Duration, error) {
	d.n++
	inc := &incarnation{n: d.n, log: filepath.Join(d.logDir, fmt.Sprintf("driver-%03d.log", d.n)), exited: make(chan struct{})}
	logf, err := os.Create(inc.log)
	if err != nil {
		return 0, err
	}
	inc.cmd = exec.Command(d.bin, d.args...)
	inc.cmd.Stdout, inc.cmd.Stderr = logf, logf
	inc.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// No Kubernetes: the driver runs without Node events (in-cluster
	// config is looked up from these variables).
	inc.cmd.Env = withoutKube(os.Environ())
	inc.started = time.Now()
	if err := inc.cmd.Start(); err != nil {
		logf.Close()
		return 0, fmt.Errorf("start %s: %w", d.bin, err)
	}
	go func() {
		inc.err = inc.cmd.Wait()
		logf.Close()
		close(inc.exited)
	}()
	d.cur.Store(inc)
	if err := d.waitReady(inc); err != nil {
		return 0, err
	}
	return inc.probed, nil
}

func withoutKube(env []string) []string {
	var out []string
	for _, e := range env {
		if !strings.HasPrefix(e, "KUBERNETES_") && !strings.HasPrefix(e, "KUBECONFIG=") {
			out = append(out, e)
		}
	}
	return out
}

// waitReady waits until the new incarnation accepts connections on the
// socket, connects, and polls Probe until the driver says ready. The
// socket file of the previous incarnation may still be on disk, so a
// refused connection is retried rather than taken as an answer; the gRPC
// client is made only once the socket accepts, so that its reconnection
// backoff (a second by default) does not count as start-up time.
func (d *driverProc) waitReady(inc *incarnation) error {
	deadline := time.Now().Add(readyTimeout)
	exited := func() error {
		select {
		case <-inc.exited:
			return fmt.Errorf("driver #%d exited during start-up (%v); log:\n%s", inc.n, inc.err, tail(inc.log, 40))
		default:
			return nil
		}
	}
	for {
		if err := exited(); err != nil {
			return err
		}
		if c, err := net.Dial("unix", d.sock); err == nil {
			c.Close()
			inc.listening = time.Since(inc.started)
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("driver #%d does not listen on %s within %s; log:\n%s", inc.n, d.sock, readyTimeout, tail(inc.log, 40))
		}
		time.Sleep(time.Millisecond)
	}
	// A short reconnection backoff: the driver may accept on its socket
	// (claimed early, to refuse a second instance) before gRPC serves
	// there, and gRPC's default first backoff of a second would be
	// counted as start-up time.
	conn, err := grpc.NewClient("unix://"+d.sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 2 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 50 * time.Millisecond}}))
	if err != nil {
		return err
	}
	inc.conn = conn
	inc.ident, inc.ctl, inc.node = csi.NewIdentityClient(conn), csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	for time.Now().Before(deadline) {
		if err := exited(); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := inc.ident.Probe(ctx, &csi.ProbeRequest{})
		cancel()
		inc.probes++
		if err == nil && (resp.GetReady() == nil || resp.GetReady().GetValue()) {
			inc.probed = time.Since(inc.started)
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return fmt.Errorf("driver #%d not ready within %s; log:\n%s", inc.n, readyTimeout, tail(inc.log, 40))
}

// running reports whether the incarnation was neither killed nor exited.
func (inc *incarnation) running() bool {
	select {
	case <-inc.exited:
		return false
	default:
		return !inc.killed.Load()
	}
}

// current is the running incarnation.
func (d *driverProc) current() *incarnation { return d.cur.Load() }

// kill SIGKILLs the incarnation's whole process group, reaps the driver
// and waits for the rest of the group; lingered is how long that rest
// outlived the driver. It reports an error if the driver had already
// exited on its own: that is a crash the test did not cause.
func (d *driverProc) kill(inc *incarnation) (lingered time.Duration, err error) {
	select {
	case <-inc.exited:
		return 0, fmt.Errorf("driver #%d had exited by itself before the kill (%v); log:\n%s", inc.n, inc.err, tail(inc.log, 40))
	default:
	}
	inc.killed.Store(true)
	if err := syscall.Kill(-inc.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		return 0, fmt.Errorf("kill driver #%d (pgid %d): %w", inc.n, inc.cmd.Process.Pid, err)
	}
	<-inc.exited
	reaped := time.Now()
	seen, err := waitGroupGone(inc.cmd.Process.Pid)
	if err != nil || !seen {
		return 0, err
	}
	return time.Since(reaped), nil
}

// groupGoneTimeout bounds the wait for the killed driver's children.
const groupGoneTimeout = 30 * time.Second

// waitGroupGone waits until no live process is left in the process group,
// as a container runtime waits for a killed container's cgroup to empty
// before restarting it. A child caught between fork and exec still holds
// copies of the driver's descriptors, its CSI socket and lock file among
// them (seen: the old socket accepting connections after the driver was
// reaped), and a child in uninterruptible sleep (umount) dies late.
// It reports whether any process was left.
func waitGroupGone(pgid int) (seen bool, err error) {
	deadline := time.Now().Add(groupGoneTimeout)
	for {
		left := groupMembers(pgid)
		if len(left) == 0 {
			return seen, nil
		}
		seen = true
		if time.Now().After(deadline) {
			return true, fmt.Errorf("processes of the killed driver's group %d still alive after %s: %s", pgid, groupGoneTimeout, strings.Join(left, ", "))
		}
		time.Sleep(time.Millisecond)
	}
}

// groupMembers lists the live (not zombie) processes of a process group
// as "pid(comm) state".
func groupMembers(pgid int) []string {
	var out []string
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, st := range stats {
		b, err := os.ReadFile(st)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[i+1:])
		if len(f) < 3 || f[2] != strconv.Itoa(pgid) || f[0] == "Z" {
			continue
		}
		out = append(out, strings.Replace(s[:i+1], " (", "(", 1)+" "+f[0])
	}
	return out
}

// stop ends the incarnation with SIGTERM, as the kubelet does, and
// expects a clean exit.
func (d *driverProc) stop(inc *incarnation) error {
	select {
	case <-inc.exited:
		return fmt.Errorf("driver #%d had exited by itself (%v); log:\n%s", inc.n, inc.err, tail(inc.log, 40))
	default:
	}
	inc.stopping.Store(true)
	if err := inc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-inc.exited:
	case <-time.After(30 * time.Second):
		inc.killed.Store(true)
		_ = syscall.Kill(-inc.cmd.Process.Pid, syscall.SIGKILL)
		<-inc.exited
		return fmt.Errorf("driver #%d did not stop within 30 s of SIGTERM; log:\n%s", inc.n, tail(inc.log, 40))
	}
	if inc.conn != nil {
		inc.conn.Close()
	}
	if inc.err != nil {
		return fmt.Errorf("driver #%d exited with %v after SIGTERM; log:\n%s", inc.n, inc.err, tail(inc.log, 40))
	}
	return nil
}

// abandon is the cleanup net: whatever incarnation still runs is killed.
func (d *driverProc) abandon() {
	inc := d.current()
	if inc == nil {
		return
	}
	select {
	case <-inc.exited:
	default:
		inc.killed.Store(true)
		_ = syscall.Kill(-inc.cmd.Process.Pid, syscall.SIGKILL)
		<-inc.exited
	}
	if inc.conn != nil {
		inc.conn.Close()
	}
}

// tail returns the last n lines of a log file, for failure messages.
func tail(file string, n int) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Sprintf("(log %s: %v)", file, err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// logsMentioning returns the last n lines of all incarnations' logs that
// contain s, each prefixed with its incarnation.
func (d *driverProc) logsMentioning(s string, n int) string {
	var out []string
	for i := 1; i <= d.n; i++ {
		b, err := os.ReadFile(filepath.Join(d.logDir, fmt.Sprintf("driver-%03d.log", i)))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, s) {
				out = append(out, fmt.Sprintf("    driver#%-3d %s", i, line))
			}
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return strings.Join(out, "\n")
}
