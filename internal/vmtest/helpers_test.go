package vmtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests check the harness's host-side pieces without a VM.

func TestRunPattern(t *testing.T) {
	tests := []struct {
		name  string
		match []string
		miss  []string
	}{
		{"TestA", []string{"TestA"}, []string{"TestAB", "XTestA"}},
		{"TestA/sub_1", []string{"TestA/sub_1"}, []string{"TestA/sub_10"}},
		{"TestA/a.b(c)", []string{"TestA/a.b(c)"}, []string{"TestA/axb(c)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pat := runPattern(tc.name)
			// go test matches each /-separated level separately.
			levels := strings.Split(pat, "/")
			matches := func(name string) bool {
				parts := strings.Split(name, "/")
				if len(parts) != len(levels) {
					return false
				}
				for i := range parts {
					if !regexp.MustCompile(levels[i]).MatchString(parts[i]) {
						return false
					}
				}
				return true
			}
			for _, m := range tc.match {
				if !matches(m) {
					t.Errorf("pattern %q does not match %q", pat, m)
				}
			}
			for _, m := range tc.miss {
				if matches(m) {
					t.Errorf("pattern %q matches %q", pat, m)
				}
			}
		})
	}
}

func TestShellQuote(t *testing.T) {
	for _, s := range []string{"plain", "with space", "it's", `a"b$c\d`, "", "x'y'z"} {
		out, err := exec.Command("/bin/sh", "-c", "printf %s "+shellQuote(s)).Output()
		if err != nil {
			t.Fatalf("sh: %v", err)
		}
		if string(out) != s {
			t.Errorf("shellQuote(%q) came back from sh as %q", s, out)
		}
	}
}

func TestQemuEscape(t *testing.T) {
	tests := map[string]string{"/a/b": "/a/b", "/a,b": "/a,,b", ",,": ",,,,"}
	for in, want := range tests {
		if got := qemuEscape(in); got != want {
			t.Errorf("qemuEscape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseLdd(t *testing.T) {
	out := []byte("\tlinux-vdso.so.1 (0x00007ffd)\n" +
		"\tlibblkid.so.1 => /lib/x86_64-linux-gnu/libblkid.so.1 (0x00007f61e4950000)\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f61e4755000)\n" +
		"\t/lib64/ld-linux-x86-64.so.2 (0x00007f61e4a23000)\n" +
		"\tlibmissing.so => not found\n")
	want := []string{"/lib/x86_64-linux-gnu/libblkid.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if got := parseLdd(out); !reflect.DeepEqual(got, want) {
		t.Errorf("parseLdd = %q, want %q", got, want)
	}
}

func TestParseShowDepends(t *testing.T) {
	out := []byte("builtin crc32c\ninsmod /lib/modules/v/kernel/fs/jbd2/jbd2.ko \ninsmod /lib/modules/v/kernel/x.ko.xz opt=1 b=2\n")
	want := []module{{"/lib/modules/v/kernel/fs/jbd2/jbd2.ko", ""}, {"/lib/modules/v/kernel/x.ko.xz", "opt=1 b=2"}}
	if got := parseShowDepends(out); !reflect.DeepEqual(got, want) {
		t.Errorf("parseShowDepends = %q, want %q", got, want)
	}
}

func TestParseInstalled(t *testing.T) {
	out := []byte("kmod installed\nlibc6:amd64 installed\nquota config-files\nbroken\n")
	want := map[string]bool{"kmod": true, "libc6": true}
	if got := parseInstalled(out); !reflect.DeepEqual(got, want) {
		t.Errorf("parseInstalled = %v, want %v", got, want)
	}
}

func TestMissingPrerequisite(t *testing.T) {
	tests := []struct {
		ci, root bool
		want     verdict
	}{
		{ci: true, root: true, want: failCI},
		{ci: true, root: false, want: failCI},
		{ci: false, root: false, want: skipNotRoot},
		{ci: false, root: true, want: failRoot},
	}
	for _, tc := range tests {
		if got := missingPrerequisite(tc.ci, tc.root); got != tc.want {
			t.Errorf("missingPrerequisite(ci=%v, root=%v) = %v, want %v", tc.ci, tc.root, got, tc.want)
		}
	}
}

func TestRunScript(t *testing.T) {
	s := runScript("TestX/it's", "/src dir", "/out dir", true, time.Minute, map[string]string{"FOO": "a b", "HOME": "/h"})
	if out, err := exec.Command("/bin/sh", "-n", "-c", s).CombinedOutput(); err != nil {
		t.Fatalf("the run script is not valid sh: %v: %s\n%s", err, out, s)
	}
	for _, want := range []string{
		"export FOO='a b'\n",
		"export HOME='/h'\n", // Config.Env overrides the defaults
		"export DM_DISABLE_UDEV='1'\n",
		"export " + guestEnv + "='1'\n",
		`-test.run '^TestX$/^it'\''s$'`,
		"-test.timeout 45s",
		"cd '/src dir'",
		"msize=262144 out '/out dir' || exit 97",
		"cp -a /work/tools /run/vmtest-tools || exit 97",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("run script lacks %q:\n%s", want, s)
		}
	}
}

// TestWithTools: a test that asks for tools finds them first on PATH and
// their libraries through LD_LIBRARY_PATH, and its own Env adds to both.
func TestWithTools(t *testing.T) {
	if env := withTools(Config{Env: map[string]string{"A": "1"}}); len(env) != 1 || env["A"] != "1" {
		t.Errorf("no tools: env %v, want Config.Env unchanged", env)
	}
	env := withTools(Config{Tools: []string{"fio"}, Env: map[string]string{"A": "1", "PATH": "/x"}})
	for k, want := range map[string]string{
		"A":               "1",
		"PATH":            "/run/vmtest-tools/bin:/usr/sbin:/usr/bin:/sbin:/bin:/x",
		"LD_LIBRARY_PATH": "/run/vmtest-tools/lib",
	} {
		if env[k] != want {
			t.Errorf("%s = %q, want %q", k, env[k], want)
		}
	}
}

// readNewc is an independent reader of the newc format, enough to check
// what archive.writeTo produced.
type newcEntry struct {
	mode       uint32
	rdev       [2]uint32
	data       string
	headerOff  int
	nameLength int
}

func readNewc(t *testing.T, b []byte) ([]string, map[string]newcEntry) {
	t.Helper()
	var order []string
	entries := map[string]newcEntry{}
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("bad header field %d at %d: %v", i, off, err)
		}
		return uint32(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off%4 != 0 || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at offset %d", off)
		}
		size, namesize := int(field(6)), int(field(11))
		name := string(b[off+110 : off+110+namesize-1])
		dataOff := align(off + 110 + namesize)
		if name == "TRAILER!!!" {
			return order, entries
		}
		order = append(order, name)
		entries[name] = newcEntry{mode: field(1), rdev: [2]uint32{field(9), field(10)},
			data: string(b[dataOff : dataOff+size]), headerOff: off, nameLength: namesize}
		off = align(dataOff + size)
	}
}

func TestArchiveNewc(t *testing.T) {
	host := filepath.Join(t.TempDir(), "host")
	if err := os.WriteFile(host, []byte("from the host\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := newArchive()
	a.symlink("bin/sh", "/bin/busybox")
	a.file("init", 0o755, []byte("#!/bin/sh\n"))
	a.hostFile("/usr/sbin/tool", 0o755, host)
	a.dir("tmp", 0o1777)
	a.charDev("dev/console", 0o600, 5, 1)
	a.file("bin/sh", 0o755, []byte("real")) // replaces the link
	var buf bytes.Buffer
	if err := a.writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	order, got := readNewc(t, buf.Bytes())
	pos := map[string]int{}
	for i, n := range order {
		pos[n] = i
	}
	tests := []struct {
		name string
		mode uint32
		data string
	}{
		{".", syscall.S_IFDIR | 0o755, ""},
		{"bin", syscall.S_IFDIR | 0o755, ""},
		{"bin/sh", syscall.S_IFREG | 0o755, "real"},
		{"init", syscall.S_IFREG | 0o755, "#!/bin/sh\n"},
		{"usr/sbin", syscall.S_IFDIR | 0o755, ""},
		{"usr/sbin/tool", syscall.S_IFREG | 0o755, "from the host\n"},
		{"tmp", syscall.S_IFDIR | 0o1777, ""},
		{"dev/console", syscall.S_IFCHR | 0o600, ""},
	}
	for _, tc := range tests {
		e, ok := got[tc.name]
		if !ok {
			t.Errorf("%s missing from the archive (have %q)", tc.name, order)
			continue
		}
		if e.mode != tc.mode || e.data != tc.data {
			t.Errorf("%s: mode %o data %q, want mode %o data %q", tc.name, e.mode, e.data, tc.mode, tc.data)
		}
		if dir := filepath.Dir(tc.name); tc.name != "." && pos[dir] >= pos[tc.name] {
			t.Errorf("%s comes before its directory %s", tc.name, dir)
		}
	}
	if e := got["dev/console"]; e.rdev != [2]uint32{5, 1} {
		t.Errorf("dev/console is device %v, want 5:1", e.rdev)
	}
	if len(order) != 10 { // the 8 above + usr and dev; bin/sh only once
		t.Errorf("archive has %d entries, want 10: %q", len(order), order)
	}
	// Cross-check with busybox's own cpio reader where the host has it.
	if bb, err := exec.LookPath("busybox"); err == nil {
		cmd := exec.Command(bb, "cpio", "-t")
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		out, err := cmd.Output() // stderr has the "N blocks" summary
		if err != nil {
			t.Fatalf("busybox cpio -t: %v", err)
		}
		if got := strings.Fields(string(out)); !reflect.DeepEqual(got, order) {
			t.Errorf("busybox cpio -t lists %q, want %q", got, order)
		}
	}
}

func TestIsDynamic(t *testing.T) {
	dyn, err := isDynamic("/bin/sh")
	if err != nil || !dyn {
		t.Errorf("isDynamic(/bin/sh) = %v, %v; want a dynamic Debian binary", dyn, err)
	}
	if bb := "/bin/busybox"; fileExists(bb) {
		if dyn, err := isDynamic(bb); err != nil || dyn {
			t.Errorf("isDynamic(%s) = %v, %v; want busybox-static", bb, dyn, err)
		}
	}
	if _, err := isDynamic("/etc/passwd"); err == nil {
		t.Errorf("isDynamic(/etc/passwd) took a text file for an ELF binary")
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestCheckBinary(t *testing.T) {
	libc := map[string]bool{"/lib/x86_64-linux-gnu/libc.so.6": true, "/lib64/ld-linux-x86-64.so.2": true}
	tests := []struct {
		name    string
		binary  string
		libs    map[string]bool
		wantErr string
	}{
		{"dynamic, no libraries in the VM", "/bin/sh", map[string]bool{}, "CGO_ENABLED=0"},
		{"dynamic, libraries in the VM", "/bin/sh", libc, ""},
		{"static", "/bin/busybox", map[string]bool{}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !fileExists(tc.binary) {
				t.Skipf("%s is not on this host", tc.binary)
			}
			err := (&hostSetup{libs: tc.libs}).checkBinary(tc.binary)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("checkBinary(%s): %v", tc.binary, err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("checkBinary(%s) = %v, want an error containing %q", tc.binary, err, tc.wantErr)
			}
		})
	}
}
