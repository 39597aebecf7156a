// Package registration registers a CSI driver with the kubelet through the
// kubelet plugin registration API (pluginregistration v1), the job that
// node-driver-registrar does as a sidecar elsewhere. node-driver-registrar
// cannot be built from the registries dhpp's machines reach, so dhpp-driver
// serves the registration socket itself.
//
// How the kubelet uses it (pkg/kubelet/pluginmanager in kubernetes):
//   - it watches its plugins_registry directory with inotify; a socket named
//     <driver>-reg.sock appearing there makes it call GetInfo, validate the
//     answer (type CSIPlugin, a name, an endpoint, a 1.x version), register
//     the driver (CSINode lists it) and report the result with
//     NotifyRegistrationStatus;
//   - afterwards it calls GetInfo periodically as a health check and drops
//     the driver when the socket stops answering;
//   - removing the socket is a deregistration.
//
// So the server must answer for as long as the driver serves CSI, must not
// exit when the kubelet reports a failed registration (the kubelet retries
// from scratch on its own; a crash loop would only make that slower), and
// must remove its socket when it stops.
package registration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// DefaultSupportedVersions is what the kubelet's CSI plugin handler accepts
// today: it picks the highest listed version whose major is 1.
var DefaultSupportedVersions = []string{"1.0.0"}

// maxUnixPath is the longest path a unix socket can bind to on Linux:
// sockaddr_un.sun_path is 108 bytes including the terminating NUL. A longer
// path fails late with an opaque "bind: invalid argument", so Validate
// rejects it up front with the path in the message.
const maxUnixPath = 107

// shutdownGrace bounds how long Run waits for in-flight calls at exit before
// cutting them off; the kubelet's calls are tiny, so this is generous.
const shutdownGrace = 5 * time.Second

// Config says what the driver tells the kubelet about itself.
type Config struct {
	// DriverName is the CSI driver name (dhpp.DriverName). It also names
	// the registration socket.
	DriverName string
	// Endpoint is the CSI socket path AS THE KUBELET SEES IT on the host,
	// e.g. /var/lib/kubelet/plugins/hostpath.dhpp.io/csi.sock — not the
	// path inside the driver's container. A plain absolute path, because
	// that is what the kubelet dials (no unix:// scheme).
	Endpoint string
	// RegistrationDir is the directory the kubelet watches, as mounted in
	// the driver's container (e.g. /registration, a hostPath of
	// /var/lib/kubelet/plugins_registry). It must already exist: creating
	// it would hide a missing hostPath mount, and the kubelet would never
	// see the socket.
	RegistrationDir string
	// SupportedVersions are the CSI spec versions offered to the kubelet;
	// empty means DefaultSupportedVersions.
	SupportedVersions []string
}

// driverNameRE is the CSI spec's rule for plugin names: at most 63
// characters, alphanumerics with '-', '.' and '_' inside, starting and ending
// with an alphanumeric (so the socket name never starts with the '.' that
// makes the kubelet ignore a file).
var driverNameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)

// versionRE accepts the version forms the kubelet parses: MAJOR.MINOR or
// MAJOR.MINOR.PATCH, optionally with a leading v.
var versionRE = regexp.MustCompile(`^v?(\d+)\.(\d+)(\.\d+)?$`)

// SocketPath is where the registration socket for cfg lives: the kubelet's
// recommended <plugin name>-reg.sock inside the registration directory.
func (c Config) SocketPath() string {
	return filepath.Join(c.RegistrationDir, c.DriverName+"-reg.sock")
}

// versions returns the configured versions or the default.
func (c Config) versions() []string {
	if len(c.SupportedVersions) == 0 {
		return DefaultSupportedVersions
	}
	return c.SupportedVersions
}

// Validate checks the configuration without touching the filesystem, so a
// typo in a flag fails at start-up with a message naming the field instead
// of as a silent "driver never appears in CSINode".
func (c Config) Validate() error {
	if !driverNameRE.MatchString(c.DriverName) {
		return fmt.Errorf("driver name %q: must be 1-63 characters, alphanumerics with '-', '.' or '_' inside, starting and ending with an alphanumeric", c.DriverName)
	}
	if c.Endpoint == "" {
		return errors.New("endpoint: must be set to the CSI socket path as the kubelet sees it")
	}
	if strings.Contains(c.Endpoint, "://") {
		return fmt.Errorf("endpoint %q: must be a plain absolute path (the kubelet dials it as a unix socket), not a URL", c.Endpoint)
	}
	if !filepath.IsAbs(c.Endpoint) {
		return fmt.Errorf("endpoint %q: must be an absolute path", c.Endpoint)
	}
	if len(c.Endpoint) > maxUnixPath {
		return fmt.Errorf("endpoint %q: %d bytes is longer than a unix socket path may be (%d)", c.Endpoint, len(c.Endpoint), maxUnixPath)
	}
	if c.RegistrationDir == "" {
		return errors.New("registration dir: must be set (the kubelet's plugins_registry as mounted in this container)")
	}
	if sock := c.SocketPath(); len(sock) > maxUnixPath {
		return fmt.Errorf("registration socket %q: %d bytes is longer than a unix socket path may be (%d)", sock, len(sock), maxUnixPath)
	}
	hasV1 := false
	for _, v := range c.versions() {
		m := versionRE.FindStringSubmatch(v)
		if m == nil {
			return fmt.Errorf("supported version %q: must look like 1.0.0", v)
		}
		if m[1] == "1" {
			hasV1 = true
		}
	}
	if !hasV1 {
		return fmt.Errorf("supported versions %q: the kubelet only accepts CSI 1.x, list at least one 1.x version", c.versions())
	}
	return nil
}

// Server is the kubelet-facing registration service. It is safe for
// concurrent use: the kubelet's calls and Status readers may overlap.
type Server struct {
	registerapi.UnimplementedRegistrationServer

	cfg Config

	mu         sync.Mutex
	registered bool
	lastErr    error
	notified   bool
}

// New validates cfg and returns a server that has not started listening.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid plugin registration config: %w", err)
	}
	cfg.SupportedVersions = append([]string(nil), cfg.versions()...)
	return &Server{cfg: cfg}, nil
}

// Run is New followed by Server.Run, for callers that do not need Status.
func Run(ctx context.Context, cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// ErrNotNotified is the Status error before the kubelet has reported on a
// registration at all: the socket is up but the kubelet has not (yet)
// called, e.g. because the registration directory is not the one it watches.
var ErrNotNotified = errors.New("kubelet has not reported a registration status yet")

// Status reports what the kubelet last said about the registration:
// registered is true once the kubelet reported success (and false again if
// it later reports a failure); lastErr is the kubelet's error text from a
// failed registration, ErrNotNotified before the first report, and nil after
// a successful one. It is meant for the driver's /readyz and metrics.
func (s *Server) Status() (registered bool, lastErr error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.notified {
		return false, ErrNotNotified
	}
	return s.registered, s.lastErr
}

// SocketPath is the registration socket this server listens on.
func (s *Server) SocketPath() string { return s.cfg.SocketPath() }

// GetInfo tells the kubelet which driver this is and where its CSI socket is.
func (s *Server) GetInfo(ctx context.Context, _ *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	klog.V(5).InfoS("Kubelet asked for plugin info", "driver", s.cfg.DriverName)
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.cfg.DriverName,
		Endpoint:          s.cfg.Endpoint,
		SupportedVersions: append([]string(nil), s.cfg.SupportedVersions...),
	}, nil
}

// NotifyRegistrationStatus records the kubelet's verdict. A failure is
// logged at error level and kept for Status; it never ends the process,
// because the kubelet retries registration by itself.
func (s *Server) NotifyRegistrationStatus(ctx context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	s.mu.Lock()
	s.notified = true
	s.registered = st.GetPluginRegistered()
	if s.registered {
		s.lastErr = nil
	} else {
		msg := st.GetError()
		if msg == "" {
			msg = "no reason given"
		}
		s.lastErr = fmt.Errorf("kubelet rejected the registration of %s: %s", s.cfg.DriverName, msg)
	}
	err := s.lastErr
	s.mu.Unlock()

	if err != nil {
		klog.ErrorS(err, "Kubelet plugin registration failed", "driver", s.cfg.DriverName, "endpoint", s.cfg.Endpoint)
	} else {
		klog.InfoS("Registered with the kubelet", "driver", s.cfg.DriverName, "endpoint", s.cfg.Endpoint)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Run listens on the registration socket and serves the kubelet until ctx is
// done, then stops serving and removes the socket. A stale socket left by a
// previous instance is removed first (the kubelet's convention: each start
// unlinks and listens anew); anything at that path that is not a socket is
// an error rather than something to delete.
func (s *Server) Run(ctx context.Context) error {
	path := s.cfg.SocketPath()
	if fi, err := os.Stat(s.cfg.RegistrationDir); err != nil {
		return fmt.Errorf("registration dir %s (is the kubelet's plugins_registry mounted there?): %w", s.cfg.RegistrationDir, err)
	} else if !fi.IsDir() {
		return fmt.Errorf("registration dir %s: not a directory", s.cfg.RegistrationDir)
	}
	if err := removeStaleSocket(path); err != nil {
		return err
	}

	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on registration socket %s: %w", path, err)
	}
	ul := lis.(*net.UnixListener)
	// Go would unlink the path on Close whatever is there by then; if a
	// newer instance has already replaced our socket, that would deregister
	// the newer instance. Unlink ourselves, only if the file is still ours.
	ul.SetUnlinkOnClose(false)
	ours, err := os.Lstat(path)
	if err != nil {
		_ = lis.Close()
		return fmt.Errorf("stat new registration socket %s: %w", path, err)
	}
	defer removeIfSame(path, ours)

	gs := grpc.NewServer()
	registerapi.RegisterRegistrationServer(gs, s)

	klog.InfoS("Serving kubelet plugin registration", "socket", path, "driver", s.cfg.DriverName, "endpoint", s.cfg.Endpoint, "versions", s.cfg.SupportedVersions)

	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(lis) }()

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve kubelet plugin registration on %s: %w", path, err)
	case <-ctx.Done():
	}

	// Let an in-flight kubelet call finish, but do not hang shutdown on it.
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(shutdownGrace):
		gs.Stop()
	}
	klog.InfoS("Stopped kubelet plugin registration", "socket", path)
	return nil
}

// removeStaleSocket deletes a socket left at path by an earlier instance.
// A missing file is fine; a file that is not a socket is refused, because
// deleting it would destroy something this driver did not create.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspect registration socket path %s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("registration socket path %s exists and is not a socket (%s): refusing to remove it", path, fi.Mode().Type())
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale registration socket %s: %w", path, err)
	}
	klog.InfoS("Removed stale registration socket", "socket", path)
	return nil
}

// removeIfSame unlinks path if it is still the file described by ours.
func removeIfSame(path string, ours os.FileInfo) {
	cur, err := os.Lstat(path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			klog.ErrorS(err, "Cannot inspect registration socket at exit", "socket", path)
		}
		return
	}
	if !sameFile(cur, ours) {
		klog.InfoS("Registration socket was replaced by another instance; leaving it", "socket", path)
		return
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		klog.ErrorS(err, "Cannot remove registration socket at exit", "socket", path)
	}
}

// sameFile reports whether a and b describe the same socket file. Device and
// inode alone are not enough: a filesystem reuses a freed inode number at
// once, so a newer instance's socket often gets the inode of the one it
// replaced. The modification time (set when the socket was bound) tells two
// bindings apart unless they happened within one filesystem clock tick.
func sameFile(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.ModTime().Equal(b.ModTime())
}
