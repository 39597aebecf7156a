//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
)

// statefulSetYAML is the seed scenario's workload: busybox standing in for
// Elasticsearch, one replica per node (required anti-affinity), each with
// its own claim on hostpath-dynamic, ready once its volume is mounted.
func statefulSetYAML(ns, name string, replicas int, size string) string {
	return stsYAML(stsOpts{ns: ns, name: name, class: storageClass, size: size, replicas: replicas,
		ready: []string{"test", "-d", "/data"}})
}

// stsOpts shapes stsYAML.
type stsOpts struct {
	ns, name, class, size string
	replicas              int
	// setup runs in each replica's container before it idles (a shell
	// line, "" for none); ready is its readiness check's command.
	setup string
	ready []string
}

// stsYAML is a StatefulSet of busybox replicas, one per node (required
// anti-affinity), each with its own claim. The container exits at once on
// TERM so that deleting and scaling pods takes seconds, not the grace period.
func stsYAML(o stsOpts) string {
	script := "trap 'exit 0' TERM; while true; do sleep 1; done"
	if o.setup != "" {
		script = o.setup + "; " + script
	}
	return fmt.Sprintf(`apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: %[2]s
  namespace: %[1]s
spec:
  serviceName: %[2]s
  replicas: %[3]d
  podManagementPolicy: Parallel
  selector:
    matchLabels: {app: %[2]s}
  template:
    metadata:
      labels: {app: %[2]s}
    spec:
      terminationGracePeriodSeconds: 5
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector:
              matchLabels: {app: %[2]s}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: main
        image: %[5]s
        imagePullPolicy: Never
        command: ["sh", "-c", %[7]q]
        readinessProbe:
          exec: {command: %[8]s}
          periodSeconds: 1
        volumeMounts:
        - {name: data, mountPath: /data}
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: %[6]s
      resources:
        requests: {storage: %[4]s}
`, o.ns, o.name, o.replicas, o.size, busybox, o.class, script, flowList(o.ready))
}

// flowList is a YAML flow sequence of strings (JSON is valid YAML).
func flowList(items []string) string {
	b, err := json.Marshal(items)
	if err != nil {
		panic(err) // strings always marshal
	}
	return string(b)
}

// podOpts shapes podWithClaimYAML.
type podOpts struct {
	node string // nodeSelector kubernetes.io/hostname; "" lets the scheduler pick
	// command replaces the default (sleep until TERM).
	command string
	// claimReadOnly sets persistentVolumeClaim.readOnly, so the kubelet
	// asks the driver for a read-only publish.
	claimReadOnly bool
	// block mounts the claim as a raw device at /dev/xvda instead of /data.
	block bool
	// securityContext is a pod-level securityContext in flow style.
	securityContext string
}

// pvcYAML is a claim on hostpath-dynamic.
func pvcYAML(ns, name, size string, block bool) string {
	mode := "Filesystem"
	if block {
		mode = "Block"
	}
	return fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: %[2]s
  namespace: %[1]s
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: %[4]s
  volumeMode: %[5]s
  resources:
    requests: {storage: %[3]s}
`, ns, name, size, storageClass, mode)
}

// podWithClaimYAML is a busybox pod using claim.
func podWithClaimYAML(ns, name, claim string, o podOpts) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
spec:
  terminationGracePeriodSeconds: 5
`, name, ns)
	if o.node != "" {
		fmt.Fprintf(&b, "  nodeSelector: {kubernetes.io/hostname: %s}\n", o.node)
	}
	if o.securityContext != "" {
		fmt.Fprintf(&b, "  securityContext: %s\n", o.securityContext)
	}
	cmd := o.command
	if cmd == "" {
		cmd = "trap 'exit 0' TERM; while true; do sleep 1; done"
	}
	fmt.Fprintf(&b, `  containers:
  - name: main
    image: %s
    imagePullPolicy: Never
    command: ["sh", "-c", %q]
`, busybox, cmd)
	if o.block {
		b.WriteString("    volumeDevices:\n    - {name: data, devicePath: /dev/xvda}\n")
	} else {
		b.WriteString("    volumeMounts:\n    - {name: data, mountPath: /data}\n")
	}
	fmt.Fprintf(&b, `  volumes:
  - name: data
    persistentVolumeClaim: {claimName: %s, readOnly: %t}
`, claim, o.claimReadOnly)
	return b.String()
}
