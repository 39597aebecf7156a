package vmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Where Config.Tools are put in the share, and where the guest runs them
// from: the run script copies them into the guest's tmpfs first, because
// the 9p share is mounted without a page cache and fio would otherwise
// read its 84 MB of libraries over 9p at every start (seconds under TCG).
const (
	toolsBin      = "tools/bin"
	toolsLib      = "tools/lib"
	guestToolsDir = "/run/vmtest-tools"
)

// shareTools links each of tools (found in the host's system directories)
// into share/tools/bin and the libraries ldd names for it that the
// initramfs lacks into share/tools/lib, so the guest runs the host's
// binary with the host's libraries.
func (s *hostSetup) shareTools(share string, tools []string) error {
	if len(tools) == 0 {
		return nil
	}
	for _, d := range []string{toolsBin, toolsLib} {
		if err := os.MkdirAll(filepath.Join(share, d), 0o755); err != nil {
			return fmt.Errorf("tools: %w", err)
		}
	}
	linked := map[string]bool{}
	for _, tool := range tools {
		p, err := lookTool(tool)
		if err != nil {
			return err
		}
		if err := linkOrCopy(p, filepath.Join(share, toolsBin, tool)); err != nil {
			return fmt.Errorf("tool %s: %w", tool, err)
		}
		dyn, err := isDynamic(p)
		if err != nil || !dyn {
			continue
		}
		out, err := exec.Command("ldd", p).Output()
		if err != nil {
			return fmt.Errorf("ldd %s: %w", p, err)
		}
		for _, l := range parseLdd(out) {
			base := filepath.Base(l)
			if s.libs[l] || linked[base] {
				continue
			}
			// ldd names the soname, usually a symlink: link its
			// target under the soname (a hard link to the symlink
			// itself would dangle in the share).
			real, err := filepath.EvalSymlinks(l)
			if err != nil {
				return fmt.Errorf("tool %s: library %s: %w", tool, l, err)
			}
			if err := linkOrCopy(real, filepath.Join(share, toolsLib, base)); err != nil {
				return fmt.Errorf("tool %s: library %s: %w", tool, l, err)
			}
			linked[base] = true
		}
	}
	return nil
}

// withTools is cfg.Env with PATH and LD_LIBRARY_PATH extended by the
// shared tools' directories, when the test asks for tools.
func withTools(cfg Config) map[string]string {
	if len(cfg.Tools) == 0 {
		return cfg.Env
	}
	env := map[string]string{
		"PATH":            guestToolsDir + "/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LD_LIBRARY_PATH": guestToolsDir + "/lib",
	}
	for k, v := range cfg.Env {
		if k == "PATH" || k == "LD_LIBRARY_PATH" {
			v = env[k] + ":" + v
		}
		env[k] = v
	}
	return env
}
