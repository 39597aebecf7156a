package kube

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

// TestRESTAPI checks the bare REST client against a stand-in API server on
// loopback: the paths, verbs, content types and query parameters the real
// API server expects, and decoding of its answers.
func TestRESTAPI(t *testing.T) {
	type request struct{ method, path, query, contentType, body string }
	var (
		mu   sync.Mutex
		last request
	)
	node := `{"kind":"Node","apiVersion":"v1","metadata":{"name":"n1","labels":{"a":"b"}}}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		last = request{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Content-Type"), string(body)}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/api/v1/nodes" && r.URL.Query().Get("watch") == "true":
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, `{"type":"ADDED","object":`+node+"}\n")
		case r.URL.Path == "/api/v1/nodes":
			_, _ = io.WriteString(w, `{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":[`+node+`]}`)
		case r.URL.Path == "/api/v1/persistentvolumes":
			_, _ = io.WriteString(w, `{"kind":"PersistentVolumeList","apiVersion":"v1","metadata":{"continue":"c2"},"items":[{"metadata":{"name":"n1"},"spec":{"csi":{"driver":"hostpath.dhpp.io","volumeHandle":"n1/default/pvc-1"}}}]}`)
		case strings.HasPrefix(r.URL.Path, "/api/v1/nodes/"):
			_, _ = io.WriteString(w, node)
		case r.URL.Path == "/api/v1/namespaces/default/events":
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write(body)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	api, err := newRESTAPI(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sel := "metadata.name=n1"
	tests := []struct {
		name  string
		call  func() (string, error) // returns the decoded object's name
		want  request
		match func(r request) bool
	}{
		{
			name: "get node",
			call: func() (string, error) { n, err := api.GetNode(ctx, "n1"); return n.Name, err },
			want: request{method: "GET", path: "/api/v1/nodes/n1"},
		},
		{
			name: "list nodes with a field selector",
			call: func() (string, error) {
				l, err := api.ListNodes(ctx, metav1.ListOptions{FieldSelector: sel})
				if err != nil || len(l.Items) != 1 {
					return "", err
				}
				return l.Items[0].Name, nil
			},
			want:  request{method: "GET", path: "/api/v1/nodes"},
			match: func(r request) bool { return strings.Contains(r.query, "fieldSelector=metadata.name%3Dn1") },
		},
		{
			name: "watch nodes",
			call: func() (string, error) {
				w, err := api.WatchNodes(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: "7"})
				if err != nil {
					return "", err
				}
				defer w.Stop()
				ev := <-w.ResultChan()
				n, _ := ev.Object.(*corev1.Node)
				if n == nil {
					return "", nil
				}
				return n.Name, nil
			},
			want: request{method: "GET", path: "/api/v1/nodes"},
			match: func(r request) bool {
				return strings.Contains(r.query, "watch=true") && strings.Contains(r.query, "fieldSelector=")
			},
		},
		{
			name: "list PVs from the watch cache, one page",
			call: func() (string, error) {
				l, err := api.ListPersistentVolumes(ctx, metav1.ListOptions{ResourceVersion: "0", Limit: 500, Continue: "c1"})
				if err != nil || len(l.Items) != 1 || l.Continue != "c2" || l.Items[0].Spec.CSI == nil || l.Items[0].Spec.CSI.VolumeHandle != "n1/default/pvc-1" {
					return "", err
				}
				return l.Items[0].Name, nil
			},
			want: request{method: "GET", path: "/api/v1/persistentvolumes"},
			match: func(r request) bool {
				return strings.Contains(r.query, "resourceVersion=0") && strings.Contains(r.query, "limit=500") && strings.Contains(r.query, "continue=c1")
			},
		},
		{
			name: "merge-patch labels",
			call: func() (string, error) {
				n, err := api.PatchNode(ctx, "n1", types.MergePatchType, []byte(`{"metadata":{"labels":{"x":null}}}`), "")
				return n.Name, err
			},
			want: request{method: "PATCH", path: "/api/v1/nodes/n1", contentType: "application/merge-patch+json", body: `{"metadata":{"labels":{"x":null}}}`},
		},
		{
			name: "strategic-merge-patch status",
			call: func() (string, error) {
				n, err := api.PatchNode(ctx, "n1", types.StrategicMergePatchType, []byte(`{"status":{}}`), "status")
				return n.Name, err
			},
			want: request{method: "PATCH", path: "/api/v1/nodes/n1/status", contentType: "application/strategic-merge-patch+json", body: `{"status":{}}`},
		},
		{
			name: "create event",
			call: func() (string, error) {
				ev, err := api.CreateEvent(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "n1.1", Namespace: "default"}, Reason: "PoolFenced"})
				return ev.Name, err
			},
			want: request{method: "POST", path: "/api/v1/namespaces/default/events", contentType: "application/json"},
			match: func(r request) bool {
				var ev corev1.Event
				return json.Unmarshal([]byte(r.body), &ev) == nil && ev.Reason == "PoolFenced" && ev.Kind == "Event" && ev.APIVersion == "v1"
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, err := tt.call()
			if err != nil {
				t.Fatal(err)
			}
			wantName := "n1"
			if tt.name == "create event" {
				wantName = "n1.1"
			}
			if name != wantName {
				t.Errorf("decoded name %q, want %q", name, wantName)
			}
			mu.Lock()
			got := last
			mu.Unlock()
			if got.method != tt.want.method || got.path != tt.want.path ||
				(tt.want.contentType != "" && got.contentType != tt.want.contentType) ||
				(tt.want.body != "" && got.body != tt.want.body) {
				t.Errorf("request %+v, want %+v", got, tt.want)
			}
			if tt.match != nil && !tt.match(got) {
				t.Errorf("request %+v does not match", got)
			}
		})
	}
}
