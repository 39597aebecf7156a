package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/internal/testdisk"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// helperEnv makes the test binary, re-executed, hold a socket like a
// running driver until it is killed (TestListenStaleAfterKill).
const helperEnv = "DHPP_LISTEN_HELPER_SOCKET"

func TestMain(m *testing.M) {
	// Every refusal waits this long first; TestListenWaitsForKilledInstance
	// sets a longer one.
	ClaimWait = 300 * time.Millisecond
	if sock := os.Getenv(helperEnv); sock != "" {
		l, err := Listen(sock)
		if err != nil {
			fmt.Println("listen:", err)
			os.Exit(1)
		}
		fmt.Println("listening")
		for {
			if c, err := l.Accept(); err == nil {
				c.Close()
			}
		}
	}
	os.Exit(m.Run())
}

// serve runs a driver on sock and returns a connected Identity client.
func serve(t *testing.T, sock string) csi.IdentityClient {
	t.Helper()
	d, _ := inputDriver(t, nil)
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return csi.NewIdentityClient(conn)
}

func probe(t *testing.T, c csi.IdentityClient) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Probe(ctx, &csi.ProbeRequest{}); err != nil {
		t.Fatalf("Probe of the running instance: %v", err)
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

// TestListenRefusesWhenServed: a second instance on a socket that is
// served fails with a message naming the socket and how to find the other
// process, and the first instance's socket stays as it was and answers.
func TestListenRefusesWhenServed(t *testing.T) {
	tests := []struct {
		name string
		// start serves sock as the "first instance".
		start func(t *testing.T, sock string) func(t *testing.T)
		want  []string
	}{
		{"dhpp instance holding the lock", func(t *testing.T, sock string) func(t *testing.T) {
			c := serve(t, sock)
			return func(t *testing.T) { probe(t, c) }
		}, []string{"another dhpp-driver instance (process " + fmt.Sprint(os.Getpid()) + ")", "fuser -v " + "SOCK.lock"}},
		{"server without the lock (an older driver)", func(t *testing.T, sock string) func(t *testing.T) {
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			return func(t *testing.T) {
				c, err := net.Dial("unix", sock)
				if err != nil {
					t.Fatalf("the first server no longer answers: %v", err)
				}
				c.Close()
			}
		}, []string{"another process serves the CSI socket SOCK", "ss -xlp"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "csi.sock")
			check := tt.start(t, sock)
			ino := inode(t, sock)
			start := time.Now()
			l, err := Listen(sock)
			if err == nil {
				l.Close()
				t.Fatal("a second Listen on a served socket succeeded")
			}
			if took := time.Since(start); took < ClaimWait {
				t.Errorf("refused after %v, before waiting ClaimWait (%v) for the first instance to go", took, ClaimWait)
			}
			for _, w := range tt.want {
				if w = strings.ReplaceAll(w, "SOCK", sock); !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if got := inode(t, sock); got != ino {
				t.Fatalf("the socket was replaced (inode %d -> %d)", ino, got)
			}
			check(t)
		})
	}
}

// TestListenReplacesStale: what a crashed instance leaves behind is
// replaced; what is not a socket is not.
func TestListenReplacesStale(t *testing.T) {
	t.Run("socket nobody serves", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "csi.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		probe(t, serve(t, sock))
	})
	t.Run("regular file", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "csi.sock")
		if err := os.WriteFile(sock, []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		if l, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "is not a socket") {
			if l != nil {
				l.Close()
			}
			t.Fatalf("Listen over a regular file = %v", err)
		}
		if b, err := os.ReadFile(sock); err != nil || string(b) != "keep" {
			t.Fatalf("the file changed: %q, %v", b, err)
		}
	})
	t.Run("closed listener frees the lock", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "csi.sock")
		l, err := Listen(sock)
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		if l, err = Listen(sock); err != nil {
			t.Fatalf("Listen after the first instance stopped: %v", err)
		}
		l.Close()
	})
}

// TestListenStaleAfterKill: a driver process killed with SIGKILL leaves
// its socket file and lock file behind; the next instance takes over.
func TestListenStaleAfterKill(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "csi.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+sock)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	buf := make([]byte, 64)
	n, _ := out.Read(buf)
	if !strings.Contains(string(buf[:n]), "listening") {
		t.Fatalf("helper: %q", buf[:n])
	}
	if l, err := Listen(sock); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("process %d", cmd.Process.Pid)) {
		if l != nil {
			l.Close()
		}
		t.Fatalf("Listen while the helper runs = %v, want a refusal naming its pid", err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var ws *exec.ExitError
	if err := cmd.Wait(); !errors.As(err, &ws) {
		t.Fatalf("helper exit: %v", err)
	}
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("kill -9 should leave the socket behind: %v", err)
	}
	probe(t, serve(t, sock))
}

// TestListenWaitsForKilledInstance: what a killed instance leaves holding
// the lock or the listening socket for a moment (a child between fork and
// exec) does not make the next instance refuse to start.
func TestListenWaitsForKilledInstance(t *testing.T) {
	defer func(d time.Duration) { ClaimWait = d }(ClaimWait)
	ClaimWait = 5 * time.Second
	const hold = 300 * time.Millisecond
	tests := []struct {
		name string
		// hold keeps sock claimed and returns a function that lets go.
		hold func(t *testing.T, sock string) func()
	}{
		{"lock held", func(t *testing.T, sock string) func() {
			f, err := lockFile(sock, 0)
			if err != nil {
				t.Fatal(err)
			}
			return func() { f.Close() }
		}},
		{"socket answering without the lock", func(t *testing.T, sock string) func() {
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			l.(*net.UnixListener).SetUnlinkOnClose(false)
			return func() { l.Close() }
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "csi.sock")
			release := tt.hold(t, sock)
			timer := time.AfterFunc(hold, release)
			defer timer.Stop()
			start := time.Now()
			l, err := Listen(sock)
			if err != nil {
				t.Fatalf("Listen while the claim is let go after %v: %v", hold, err)
			}
			l.Close()
			if took := time.Since(start); took < hold {
				t.Fatalf("Listen returned after %v, before the claim was let go (%v)", took, hold)
			}
		})
	}
}

// TestServing: Serving (the driver's liveness) is false before Serve runs,
// true while it accepts connections and false again once it returned.
func TestServing(t *testing.T) {
	d, _ := inputDriver(t, nil)
	l, err := Listen(filepath.Join(t.TempDir(), "csi.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Serving() {
		t.Fatal("Serving before Serve")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, l) }()
	testdisk.WaitFor(t, "Serving", d.Serving)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if d.Serving() {
		t.Fatal("Serving after Serve returned")
	}
}
