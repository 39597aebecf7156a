package conformance

import (
	"regexp"
	"strings"
	"testing"
)

const sampleJUnit = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="6" disabled="0" errors="0" failures="2" time="12.5">
  <testsuite name="Kubernetes e2e suite" package="/x" tests="6" disabled="0" skipped="2" errors="0" failures="2" time="12.5">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1"></testcase>
    <testcase name="[It] [sig-storage] External Storage [Driver: hostpath.dhpp.io] [Testpattern: Dynamic PV (default fs)] volumes should store data" classname="Kubernetes e2e suite" status="passed" time="30"></testcase>
    <testcase name="[It] [sig-storage] External Storage [Driver: hostpath.dhpp.io] [Testpattern: Dynamic PV (block volmode)] volumes should store data" classname="Kubernetes e2e suite" status="failed" time="300"><failure message="timed out waiting for PVC" type="failed">long text</failure></testcase>
    <testcase name="[It] [sig-storage] External Storage [Driver: hostpath.dhpp.io] [Testpattern: Dynamic PV (default fs)] subPath should fail" classname="Kubernetes e2e suite" status="failed" time="3"><failure message="boom&#xA;line 2" type="failed"></failure></testcase>
    <testcase name="[It] [sig-storage] External Storage [Driver: hostpath.dhpp.io] [Testpattern: Dynamic PV (ntfs)] volumes should store data" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped - Driver does not support ntfs"></skipped></testcase>
    <testcase name="[It] [sig-storage] In-tree Volumes [Driver: nfs] volumes should store data" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
  </testsuite>
</testsuites>`

func TestJudge(t *testing.T) {
	specs, err := ParseJUnit(strings.NewReader(sampleJUnit))
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 6 {
		t.Fatalf("parsed %d specs, want 6", len(specs))
	}
	focus := regexp.MustCompile(Focus)
	block := Skip{Pattern: `\(block volmode\)`, Reason: "item 1"}
	stale := Skip{Pattern: `no such spec`, Reason: "gone"}
	tests := []struct {
		name                      string
		skips                     []Skip
		passed, failed, skipped   int
		unexpected, listed, stale int
		ok                        bool
	}{
		{"no skip list: both failures unexpected", nil, 1, 2, 1, 2, 0, 0, false},
		{"block listed: one unexpected", []Skip{block}, 1, 2, 1, 1, 1, 0, false},
		{"a stale entry fails the run", []Skip{block, stale}, 1, 2, 1, 1, 1, 1, false},
		{"everything listed", []Skip{block, {Pattern: `subPath should fail`}}, 1, 2, 1, 0, 2, 0, true},
		{"an entry shadowed by an earlier one is not stale", []Skip{block, {Pattern: `block volmode\)\] volumes`}, {Pattern: `subPath should fail`}}, 1, 2, 1, 0, 2, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := Judge(specs, focus, tc.skips)
			got := []int{v.Passed, v.Failed, v.Skipped, len(v.Unexpected), len(v.ListedFailures), len(v.Stale)}
			want := []int{tc.passed, tc.failed, tc.skipped, tc.unexpected, tc.listed, tc.stale}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("passed/failed/skipped/unexpected/listed/stale = %v, want %v", got, want)
				}
			}
			if v.OK() != tc.ok {
				t.Errorf("OK() = %v, want %v", v.OK(), tc.ok)
			}
		})
	}
}

func TestJudgeReportsListedSpecsThatPass(t *testing.T) {
	specs := []Spec{{Name: "External Storage [Driver: hostpath.dhpp.io] (block volmode) x", State: "passed"}}
	v := Judge(specs, regexp.MustCompile(Focus), []Skip{{Pattern: `\(block volmode\)`}})
	if len(v.NowPassing) != 1 || !v.OK() {
		t.Errorf("NowPassing = %v, OK = %v; want the passing listed spec reported and the run OK", v.NowPassing, v.OK())
	}
}

func TestJudgeFailsOnSuiteNodeFailure(t *testing.T) {
	specs := []Spec{{Name: "[SynchronizedBeforeSuite]", State: "failed", Message: "nodes not ready"}}
	if v := Judge(specs, regexp.MustCompile(Focus), nil); v.OK() {
		t.Error("a failed BeforeSuite must fail the run")
	}
}

func TestJudgeFailsWhenNothingPassed(t *testing.T) {
	specs := []Spec{
		{Name: "[SynchronizedBeforeSuite]", State: "passed"},
		{Name: "External Storage [Driver: hostpath.dhpp.io] (ntfs) x", State: "skipped"},
	}
	if v := Judge(specs, regexp.MustCompile(Focus), nil); v.OK() {
		t.Error("a run in which no spec passed must fail")
	}
}

func TestSkipListCompilesAndHasReasons(t *testing.T) {
	if _, err := Compile(Skips); err != nil {
		t.Fatal(err)
	}
	for _, s := range Skips {
		if strings.TrimSpace(s.Reason) == "" {
			t.Errorf("skip %q has no reason", s.Pattern)
		}
	}
}

func TestForSelectsTheEntriesOfAVersion(t *testing.T) {
	skips := []Skip{{Pattern: "a"}, {Pattern: "b", Minors: []string{"v1.33"}}}
	for _, tc := range []struct {
		version string
		want    int
	}{{"v1.33.13", 2}, {"v1.37.2", 1}, {"v1.3.0", 1}} {
		if got := len(For(skips, tc.version)); got != tc.want {
			t.Errorf("For(%s) has %d entries, want %d", tc.version, got, tc.want)
		}
	}
}
