package testdisk

// Test helpers that are not about disks but are shared by several
// packages' tests: one copy here rather than one per package.

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Run runs a command and returns its combined output, failing the test
// with that output if the command fails (the VM tests' guest commands and
// the root tests' mkfs, losetup, dmsetup...).
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// WaitFor polls cond every 20ms and fails the test if it is not true within
// 10 seconds; what names the awaited state in the failure.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// LegacyCondition decodes the VolumeCondition (field 2) that dhpp writes as
// an unknown field for peers built against CSI <= 1.12 the way they would:
// from m's marshaled bytes. The test fails if m carries none on the wire.
func LegacyCondition(t testing.TB, m proto.Message) (abnormal bool, msg string) {
	t.Helper()
	raw, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		raw = raw[n:]
		if num != 2 || typ != protowire.BytesType {
			raw = raw[protowire.ConsumeFieldValue(num, typ, raw):]
			continue
		}
		cond, n := protowire.ConsumeBytes(raw)
		raw = raw[n:]
		found = true
		for len(cond) > 0 {
			cn, ct, k := protowire.ConsumeTag(cond)
			cond = cond[k:]
			switch {
			case cn == 1 && ct == protowire.VarintType:
				v, k := protowire.ConsumeVarint(cond)
				abnormal, cond = v != 0, cond[k:]
			case cn == 2 && ct == protowire.BytesType:
				s, k := protowire.ConsumeString(cond)
				msg, cond = s, cond[k:]
			default:
				cond = cond[protowire.ConsumeFieldValue(cn, ct, cond):]
			}
		}
	}
	if !found {
		t.Fatalf("%T carries no legacy volume_condition (field 2) on the wire", m)
	}
	return abnormal, msg
}

// Gather collects c once (through a pedantic registry, which checks its
// descriptions) and returns its metric families by name.
func Gather(t testing.TB, c prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// Gauge returns the gauge of family name whose labels include want, and
// whether there is one.
func Gauge(t testing.TB, mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	t.Helper()
	for _, m := range mfs[name].GetMetric() {
		match := true
		for k, v := range want {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			match = match && found
		}
		if match {
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}
