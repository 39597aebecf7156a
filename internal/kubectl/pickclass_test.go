package kubectl

import (
	"strings"
	"testing"

	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
)

func TestPickClass(t *testing.T) {
	wffc, immediate := storagev1.VolumeBindingWaitForFirstConsumer, storagev1.VolumeBindingImmediate
	class := func(name, pool string, mode *storagev1.VolumeBindingMode, isDefault bool) storagev1.StorageClass {
		sc := storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: dhpp.DriverName, VolumeBindingMode: mode}
		if pool != "" {
			sc.Parameters = map[string]string{dhpp.ParamPool: pool}
		}
		if isDefault {
			sc.Annotations = map[string]string{"storageclass.kubernetes.io/is-default-class": "true"}
		}
		return sc
	}
	other := storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "other"}, Provisioner: "other.csi.io"}
	cases := []struct {
		name    string
		classes []storagev1.StorageClass
		want    string // class name, or an error substring after "error: "
	}{
		{"only one", []storagev1.StorageClass{other, class("a", "", &wffc, false)}, "a"},
		{"deploy's two: the everyday one", []storagev1.StorageClass{class("hostpath-dynamic-restore", "", &immediate, false), class("hostpath-dynamic", "", &wffc, false)}, "hostpath-dynamic"},
		{"the pool's class wins", []storagev1.StorageClass{class("a", "", &wffc, false), class("fast", "default", &immediate, false)}, "fast"},
		{"another pool's class is no candidate", []storagev1.StorageClass{class("a", "", &immediate, false), class("fast", "fast", &wffc, false)}, "a"},
		{"the default class", []storagev1.StorageClass{class("a", "", &wffc, false), class("b", "", &wffc, true)}, "b"},
		{"two alike", []storagev1.StorageClass{class("a", "", &wffc, false), class("b", "", &wffc, false)}, "error: dhpp's: a, b"},
		{"none of dhpp's", []storagev1.StorageClass{other}, "error: no StorageClass uses"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pickClass(tc.classes, "default")
			if want, ok := strings.CutPrefix(tc.want, "error: "); ok {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("pickClass = %q, %v; want an error containing %q", got, err, want)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("pickClass = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
