package registration

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
)

const kubeletEndpoint = "/var/lib/kubelet/plugins/hostpath.dhpp.io/csi.sock"

// shortTempDir returns a fresh directory with a short path: t.TempDir()
// embeds the test name and can push a socket path past the 107-byte limit.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dhppreg")
	if err != nil {
		t.Fatalf("create temp dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// startServer runs a server for dir in the background and returns it with a
// stop function that cancels it and returns Run's result.
func startServer(t *testing.T, cfg Config) (*Server, func() error) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(10 * time.Second):
				runErr = errors.New("Run did not return within 10s of cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return s, stop
}

// kubeletClient dials the registration socket the way the kubelet does: a
// plain gRPC connection over the unix socket.
func kubeletClient(t *testing.T, sock string) registerapi.RegistrationClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return registerapi.NewRegistrationClient(conn)
}

// callCtx gives one kubelet call a deadline; WaitForReady on the call makes
// it wait for the server's socket to appear instead of failing at once.
func callCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestConfigValidate(t *testing.T) {
	long := "/" + strings.Repeat("d", 100)
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // substring; empty means valid
	}{
		{name: "valid defaults", cfg: Config{DriverName: dhpp.DriverName, Endpoint: kubeletEndpoint, RegistrationDir: "/registration"}},
		{name: "valid explicit versions", cfg: Config{DriverName: dhpp.DriverName, Endpoint: kubeletEndpoint, RegistrationDir: "/registration", SupportedVersions: []string{"0.3.0", "v1.2"}}},
		{name: "empty driver name", cfg: Config{Endpoint: kubeletEndpoint, RegistrationDir: "/r"}, wantErr: "driver name"},
		{name: "driver name starts with dot", cfg: Config{DriverName: ".hidden.io", Endpoint: kubeletEndpoint, RegistrationDir: "/r"}, wantErr: "driver name"},
		{name: "driver name with slash", cfg: Config{DriverName: "a/b", Endpoint: kubeletEndpoint, RegistrationDir: "/r"}, wantErr: "driver name"},
		{name: "driver name too long", cfg: Config{DriverName: strings.Repeat("a", 64), Endpoint: kubeletEndpoint, RegistrationDir: "/r"}, wantErr: "driver name"},
		{name: "missing endpoint", cfg: Config{DriverName: dhpp.DriverName, RegistrationDir: "/r"}, wantErr: "endpoint: must be set"},
		{name: "endpoint is a URL", cfg: Config{DriverName: dhpp.DriverName, Endpoint: "unix://" + kubeletEndpoint, RegistrationDir: "/r"}, wantErr: "not a URL"},
		{name: "relative endpoint", cfg: Config{DriverName: dhpp.DriverName, Endpoint: "csi.sock", RegistrationDir: "/r"}, wantErr: "absolute"},
		{name: "endpoint too long", cfg: Config{DriverName: dhpp.DriverName, Endpoint: long + "/csi.sock", RegistrationDir: "/r"}, wantErr: "longer than a unix socket path"},
		{name: "missing registration dir", cfg: Config{DriverName: dhpp.DriverName, Endpoint: kubeletEndpoint}, wantErr: "registration dir"},
		{name: "registration socket too long", cfg: Config{DriverName: dhpp.DriverName, Endpoint: kubeletEndpoint, RegistrationDir: long}, wantErr: "registration socket"},
		{name: "malformed version", cfg: Config{DriverName: dhpp.DriverName, Endpoint: kubeletEndpoint, RegistrationDir: "/r", SupportedVersions: []string{"one"}}, wantErr: "must look like 1.0.0"},
		{name: "no 1.x version", cfg: Config{DriverName: dhpp.DriverName, Endpoint: kubeletEndpoint, RegistrationDir: "/r", SupportedVersions: []string{"0.3.0", "2.0.0"}}, wantErr: "only accepts CSI 1.x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.wantErr)
			}
			// New must refuse the same config, so Run never starts on it.
			if _, err := New(tc.cfg); err == nil {
				t.Fatalf("New() accepted a config Validate rejected")
			}
		})
	}
}

func TestKubeletHandshake(t *testing.T) {
	dir := shortTempDir(t)
	cfg := Config{DriverName: dhpp.DriverName, Endpoint: kubeletEndpoint, RegistrationDir: dir}
	s, stop := startServer(t, cfg)
	sock := filepath.Join(dir, dhpp.DriverName+"-reg.sock")
	if s.SocketPath() != sock {
		t.Fatalf("SocketPath() = %q, want %q", s.SocketPath(), sock)
	}
	c := kubeletClient(t, sock)

	if reg, err := s.Status(); reg || !errors.Is(err, ErrNotNotified) {
		t.Fatalf("Status() before any kubelet report = (%v, %v), want (false, ErrNotNotified)", reg, err)
	}

	info, err := c.GetInfo(callCtx(t), &registerapi.InfoRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("GetInfo: %v", err)
	}
	if info.GetType() != registerapi.CSIPlugin || info.GetName() != dhpp.DriverName || info.GetEndpoint() != kubeletEndpoint ||
		!slices.Equal(info.GetSupportedVersions(), []string{"1.0.0"}) {
		t.Fatalf("GetInfo = {type %q name %q endpoint %q versions %q}, want {CSIPlugin %q %q [1.0.0]}",
			info.GetType(), info.GetName(), info.GetEndpoint(), info.GetSupportedVersions(), dhpp.DriverName, kubeletEndpoint)
	}
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("registration socket %s: mode %v, err %v; want a socket", sock, fi, err)
	}

	// The kubelet's verdicts, in the order a real kubelet could send them:
	// a rejection, then a success on its retry, then a rejection again.
	steps := []struct {
		registered bool
		msg        string
		wantReg    bool
		wantErr    string // substring; empty means nil
	}{
		{registered: false, msg: "x", wantReg: false, wantErr: "x"},
		{registered: true, wantReg: true},
		{registered: false, msg: "", wantReg: false, wantErr: "no reason given"},
	}
	for i, st := range steps {
		if _, err := c.NotifyRegistrationStatus(callCtx(t), &registerapi.RegistrationStatus{PluginRegistered: st.registered, Error: st.msg}); err != nil {
			t.Fatalf("step %d: NotifyRegistrationStatus: %v", i, err)
		}
		reg, err := s.Status()
		if reg != st.wantReg {
			t.Fatalf("step %d: Status() registered = %v, want %v", i, reg, st.wantReg)
		}
		switch {
		case st.wantErr == "" && err != nil:
			t.Fatalf("step %d: Status() err = %v, want nil", i, err)
		case st.wantErr != "" && (err == nil || !strings.Contains(err.Error(), st.wantErr)):
			t.Fatalf("step %d: Status() err = %v, want one containing %q", i, err, st.wantErr)
		}
		// A failed registration must not stop the server: the kubelet
		// retries by calling GetInfo again.
		if _, err := c.GetInfo(callCtx(t), &registerapi.InfoRequest{}); err != nil {
			t.Fatalf("step %d: GetInfo after a report: %v", i, err)
		}
	}

	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("registration socket still there after stop (err %v): the kubelet would not deregister", err)
	}
}

func TestStaleSocketIsReplaced(t *testing.T) {
	dir := shortTempDir(t)
	cfg := Config{DriverName: dhpp.DriverName, Endpoint: kubeletEndpoint, RegistrationDir: dir}
	sock := cfg.SocketPath()

	// Leave a dead socket behind, as a crashed earlier instance would.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = l.Close()
	// Let the filesystem clock tick so the new socket is told apart from
	// the stale one even if it gets the same inode number.
	time.Sleep(50 * time.Millisecond)
	stale, err := os.Lstat(sock)
	if err != nil || stale.Mode().Type() != os.ModeSocket {
		t.Fatalf("stale socket not in place: %v %v", stale, err)
	}

	_, stop := startServer(t, cfg)
	c := kubeletClient(t, sock)
	info, err := c.GetInfo(callCtx(t), &registerapi.InfoRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("GetInfo through a socket that replaced a stale one: %v", err)
	}
	if info.GetName() != dhpp.DriverName {
		t.Fatalf("GetInfo name = %q", info.GetName())
	}
	cur, err := os.Lstat(sock)
	if err != nil {
		t.Fatalf("stat socket: %v", err)
	}
	if sameFile(cur, stale) {
		t.Fatalf("socket file is still the stale one")
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestRunRefusesUnsafePaths(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, cfg *Config)
		wantErr string
		check   func(t *testing.T, cfg Config)
	}{
		{
			name: "regular file at the socket path is kept",
			prepare: func(t *testing.T, cfg *Config) {
				if err := os.WriteFile(cfg.SocketPath(), []byte("precious"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "not a socket",
			check: func(t *testing.T, cfg Config) {
				b, err := os.ReadFile(cfg.SocketPath())
				if err != nil || string(b) != "precious" {
					t.Fatalf("file at socket path was touched: %q %v", b, err)
				}
			},
		},
		{
			name:    "missing registration dir is not created",
			prepare: func(t *testing.T, cfg *Config) { cfg.RegistrationDir = filepath.Join(cfg.RegistrationDir, "absent") },
			wantErr: "is the kubelet's plugins_registry mounted",
			check: func(t *testing.T, cfg Config) {
				if _, err := os.Stat(cfg.RegistrationDir); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("registration dir was created: %v", err)
				}
			},
		},
		{
			name: "registration dir is a file",
			prepare: func(t *testing.T, cfg *Config) {
				f := filepath.Join(cfg.RegistrationDir, "f")
				if err := os.WriteFile(f, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				cfg.RegistrationDir = f
			},
			wantErr: "not a directory",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{DriverName: dhpp.DriverName, Endpoint: kubeletEndpoint, RegistrationDir: shortTempDir(t)}
			tc.prepare(t, &cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := Run(ctx, cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Run() = %v, want an error containing %q", err, tc.wantErr)
			}
			if tc.check != nil {
				tc.check(t, cfg)
			}
		})
	}
}

// A newer instance that already took over the socket path must keep its
// socket when the old instance exits, or the kubelet would deregister the
// driver that is actually running.
func TestExitLeavesAReplacedSocketAlone(t *testing.T) {
	dir := shortTempDir(t)
	cfg := Config{DriverName: dhpp.DriverName, Endpoint: kubeletEndpoint, RegistrationDir: dir}
	_, stop := startServer(t, cfg)
	sock := cfg.SocketPath()
	c := kubeletClient(t, sock)
	if _, err := c.GetInfo(callCtx(t), &registerapi.InfoRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("GetInfo: %v", err)
	}

	// The "new instance": unlink and listen anew under the same name, a
	// clock tick later (see sameFile).
	time.Sleep(50 * time.Millisecond)
	if err := os.Remove(sock); err != nil {
		t.Fatalf("remove: %v", err)
	}
	newer, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("listen as the newer instance: %v", err)
	}
	defer newer.Close()
	want, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}

	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	got, err := os.Lstat(sock)
	if err != nil || !sameFile(got, want) {
		t.Fatalf("the newer instance's socket was removed or replaced by the old one's exit (err %v)", err)
	}
}

// Status is read by /readyz while the kubelet's calls arrive; run both at
// once so `go test -race` catches unsynchronised access.
func TestStatusConcurrentWithNotify(t *testing.T) {
	dir := shortTempDir(t)
	s, _ := startServer(t, Config{DriverName: dhpp.DriverName, Endpoint: kubeletEndpoint, RegistrationDir: dir})
	c := kubeletClient(t, s.SocketPath())
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 20 {
				if _, err := c.NotifyRegistrationStatus(callCtx(t), &registerapi.RegistrationStatus{PluginRegistered: i%2 == 0, Error: "e"}, grpc.WaitForReady(true)); err != nil {
					t.Errorf("NotifyRegistrationStatus: %v", err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for range 200 {
				reg, err := s.Status()
				if reg && err != nil {
					t.Errorf("Status() = (true, %v): a registered driver must not carry an error", err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
