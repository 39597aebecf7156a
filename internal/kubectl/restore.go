package kubectl

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/poolstatus"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
)

// AnnotationRestoredFrom on a PV restore made names the trash entry.
const AnnotationRestoredFrom = "dhpp.io/restored-from"

// annProvisionedBy makes csi-provisioner treat the PV as its own: it
// deletes the volume when the PV is released (reclaimPolicy Delete).
const annProvisionedBy = "pv.kubernetes.io/provisioned-by"

// restoreJob is one `kubectl dhpp restore`: the entry, where it lies, and
// the claim it goes to.
type restoreJob struct {
	entry     string
	pool      *v1.DhppPool
	item      *v1.TrashEntry    // nil once restored (gone from the trash)
	result    *v1.RestoreResult // the driver's answer, if any
	ns, claim string
	pvc       *corev1.PersistentVolumeClaim // nil if there is none yet
}

// restore takes a trash entry back as a PV bound to ns/claim: it asks the
// entry's node (DhppPool spec.restores), waits for the answer, then makes
// the PV and, if missing, the claim. Run again, it reports what is done.
func restore(ctx context.Context, env Env, entry, to string, o Options) error {
	ns, claim, err := splitClaim(env, to)
	if err != nil {
		return err
	}
	pvs, err := env.Kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list PersistentVolumes: %w", err)
	}
	j := &restoreJob{entry: entry, ns: ns, claim: claim}
	if j.pvc, err = getClaim(ctx, env, ns, claim); err != nil {
		return err
	}
	done := restoredPV(pvs.Items, entry, ns, claim)
	if done != nil && j.pvc != nil && j.pvc.Spec.VolumeName == done.Name {
		fmt.Fprintf(env.Out, "trash entry %s was restored already: claim %s/%s is bound to PV %s (volume %s).\n", entry, ns, claim, done.Name, done.Spec.CSI.VolumeHandle)
		return nil
	}
	if err := j.find(ctx, env, o.Node); err != nil {
		return err
	}
	if j.item != nil && v1.KindOf(*j.item) == v1.TrashKindSnapshot {
		return snapshotEntryError(j, env.Now())
	}
	handle := j.handle()
	pvName := choosePV(pvs.Items, j, handle)
	if err := j.checkClaim(pvName); err != nil {
		return err
	}
	class, err := storageClass(ctx, env, o, j)
	if err != nil {
		return err
	}
	if j.result == nil || j.result.Phase != v1.RestoreRestored {
		if j.pool.Status.Health.State == "Fenced" {
			return fmt.Errorf("pool %s on node %s is fenced (%s): nothing is restored into a fenced pool. Unfence it first: kubectl dhpp unfence %s %s",
				j.pool.Spec.Pool, j.pool.Spec.Node, j.pool.Status.Health.Message, j.pool.Spec.Node, j.pool.Spec.Pool)
		}
		if j.result, err = request(ctx, env, j, pvName, o.Timeout); err != nil {
			return err
		}
	}
	pv, err := ensurePV(ctx, env, j, pvName, class)
	if err != nil {
		return err
	}
	if err := ensureClaim(ctx, env, j, pv); err != nil {
		return err
	}
	if err := forget(ctx, env, j.pool.Name, entry); err != nil {
		return err
	}
	if err := waitBound(ctx, env, ns, claim, o.Timeout); err != nil {
		return err
	}
	fmt.Fprintf(env.Out, "restored %s (node %s, pool %s) as PV %s bound to claim %s/%s: %s, %s, with the data it had when it was deleted.\n",
		entry, j.pool.Spec.Node, j.pool.Spec.Pool, pv.Name, ns, claim, poolstatus.Bytes(j.result.CapacityBytes), j.result.VolumeContext[dhpp.ContextBackend])
	return nil
}

func splitClaim(env Env, to string) (string, string, error) {
	if to == "" {
		return "", "", errors.New("--to NAMESPACE/CLAIM is required: the claim the volume is restored for (created if it does not exist)")
	}
	ns, claim, ok := strings.Cut(to, "/")
	if !ok {
		ns, claim = env.Namespace, to
	}
	if ns == "" || claim == "" || strings.Contains(claim, "/") {
		return "", "", fmt.Errorf("--to %q: want NAMESPACE/CLAIM", to)
	}
	return ns, claim, nil
}

// find locates the entry in the published trash, or among the answered
// requests once it has left the trash.
func (j *restoreJob) find(ctx context.Context, env Env, node string) error {
	ps, err := listPools(ctx, env, node)
	if err != nil {
		return err
	}
	var where []string
	for i := range ps {
		p := &ps[i]
		var item *v1.TrashEntry
		for k := range p.Status.Trash.Items {
			if p.Status.Trash.Items[k].Entry == j.entry {
				item = &p.Status.Trash.Items[k]
			}
		}
		var res *v1.RestoreResult
		for k := range p.Status.Restores {
			if r := &p.Status.Restores[k]; r.Entry == j.entry {
				res = r
			}
		}
		if item == nil && (res == nil || res.Phase != v1.RestoreRestored) {
			continue
		}
		j.pool, j.item, j.result = p, item, res
		where = append(where, p.Spec.Node+"/"+p.Spec.Pool)
	}
	switch {
	case len(where) > 1:
		return fmt.Errorf("trash entry %s is in several pools (%s): name the node with --node", j.entry, strings.Join(where, ", "))
	case len(where) == 0:
		return fmt.Errorf("trash entry %s is in no pool's trash: it was purged after the trash retention, or never existed (each pool lists its newest %d entries). See what can be restored with: kubectl dhpp trash",
			j.entry, v1.MaxTrashItems)
	}
	return nil
}

// snapshotEntryError refuses a deleted snapshot: restore brings back
// volumes, and a VolumeSnapshot cannot be re-created around existing data
// through the API. It says what the entry is and the ways that remain.
func snapshotEntryError(j *restoreJob, now time.Time) error {
	it, p := j.item, j.pool
	what := "a deleted snapshot"
	if it.VolumeSnapshot != "" {
		what += fmt.Sprintf(" (VolumeSnapshot %s/%s", it.Namespace, it.VolumeSnapshot)
		if it.SourceVolumeID != "" {
			what += ", taken of volume " + it.SourceVolumeID
		}
		what += ")"
	} else if it.SourceVolumeID != "" {
		what += " (taken of volume " + it.SourceVolumeID + ")"
	}
	purge := "at the next purge round"
	if it.PurgeAt.After(now) {
		purge = age(now, it.PurgeAt.Time)
	}
	return fmt.Errorf("trash entry %s is %s, not a volume: kubectl dhpp restore brings back deleted volumes only. "+
		"If its source claim still exists, take a new VolumeSnapshot of it; to keep this snapshot's data, copy it on node %s from %s/.dhpp/trash/%s before it is purged (%s). "+
		"To keep snapshots when their VolumeSnapshot is deleted, give their VolumeSnapshotClass deletionPolicy: Retain",
		j.entry, what, p.Spec.Node, p.Status.Path, j.entry, purge)
}

// handle is the restored volume's ID: the driver's answer, else the record's.
func (j *restoreJob) handle() string {
	if j.result != nil && j.result.VolumeHandle != "" {
		return j.result.VolumeHandle
	}
	if j.item != nil {
		return j.item.VolumeID
	}
	return ""
}

// restoredPV finds the PV a past restore of entry made for ns/claim.
func restoredPV(pvs []corev1.PersistentVolume, entry, ns, claim string) *corev1.PersistentVolume {
	for i := range pvs {
		pv := &pvs[i]
		if pv.Annotations[AnnotationRestoredFrom] == entry && pv.Spec.CSI != nil && pv.Spec.ClaimRef != nil &&
			pv.Spec.ClaimRef.Namespace == ns && pv.Spec.ClaimRef.Name == claim {
			return pv
		}
	}
	return nil
}

// choosePV names the PV: the one a past run made for the volume, else the
// volume's old PV name if it is free, else a new one.
func choosePV(pvs []corev1.PersistentVolume, j *restoreJob, handle string) string {
	taken := map[string]bool{}
	for _, pv := range pvs {
		if handle != "" && pv.Spec.CSI != nil && pv.Spec.CSI.Driver == dhpp.DriverName && pv.Spec.CSI.VolumeHandle == handle {
			return pv.Name
		}
		taken[pv.Name] = true
	}
	old := ""
	if j.item != nil {
		old = j.item.PV
	}
	if old == "" {
		old = "pvc-restored"
	}
	name := old
	for i := 2; taken[name]; i++ {
		name = fmt.Sprintf("%s-restored-%d", old, i)
	}
	return name
}

func getClaim(ctx context.Context, env Env, ns, name string) (*corev1.PersistentVolumeClaim, error) {
	c, err := env.Kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read claim %s/%s: %w", ns, name, err)
	}
	return c, nil
}

// checkClaim refuses a claim that cannot take the volume: bound to another
// one, being deleted, or Pending with a spec the volume does not meet.
func (j *restoreJob) checkClaim(pvName string) error {
	c := j.pvc
	if c == nil {
		return nil
	}
	id := c.Namespace + "/" + c.Name
	switch {
	case c.DeletionTimestamp != nil:
		return fmt.Errorf("claim %s is being deleted: wait until it is gone, or restore to another claim (--to %s/NEW-NAME)", id, c.Namespace)
	case c.Spec.VolumeName != "" && c.Spec.VolumeName != pvName:
		return fmt.Errorf("claim %s exists and is bound to PV %s, another volume: restore to a new claim (--to %s/NEW-NAME), or delete claim %s first",
			id, c.Spec.VolumeName, c.Namespace, id)
	case c.Spec.VolumeName == pvName:
		return nil
	}
	size := int64(0)
	if j.item != nil {
		size = j.item.SizeBytes
	}
	if j.result != nil && j.result.CapacityBytes > 0 {
		size = j.result.CapacityBytes
	}
	want := c.Spec.Resources.Requests[corev1.ResourceStorage]
	if size > 0 && want.Value() > size {
		return fmt.Errorf("claim %s is Pending and asks for %s, more than the volume's %s: delete it and let restore create it, or restore to a new claim (--to %s/NEW-NAME)",
			id, want.String(), poolstatus.Bytes(size), c.Namespace)
	}
	for _, m := range c.Spec.AccessModes {
		if m != corev1.ReadWriteOnce && m != corev1.ReadWriteOncePod {
			return fmt.Errorf("claim %s is Pending and asks for access mode %s, which a node-local volume cannot give: delete it and let restore create it", id, m)
		}
	}
	return nil
}

// storageClass is --storage-class, the existing claim's class, or the one
// StorageClass of dhpp that serves the entry's pool.
func storageClass(ctx context.Context, env Env, o Options, j *restoreJob) (string, error) {
	if o.StorageClass != "" {
		return o.StorageClass, nil
	}
	if j.pvc != nil && j.pvc.Spec.StorageClassName != nil && *j.pvc.Spec.StorageClassName != "" {
		return *j.pvc.Spec.StorageClassName, nil
	}
	l, err := env.Kube.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("list StorageClasses: %w", err)
	}
	return pickClass(l.Items, j.pool.Spec.Pool)
}

// pickClass chooses the class of a restored claim among the cluster's
// StorageClasses: dhpp's class naming the pool wins, else one naming no
// pool (it serves the driver's first --pool, which only the node knows).
// Several candidates narrow to the cluster's default class, then to the
// WaitForFirstConsumer ones: deploy/ installs hostpath-dynamic (everyday,
// WaitForFirstConsumer) beside hostpath-dynamic-restore (Immediate, for
// restores from snapshots), and a volume back from the trash belongs to
// the everyday one. Anything still ambiguous asks for --storage-class.
func pickClass(classes []storagev1.StorageClass, pool string) (string, error) {
	var all []string
	var exact, generic []*storagev1.StorageClass
	for i := range classes {
		sc := &classes[i]
		if sc.Provisioner != dhpp.DriverName {
			continue
		}
		all = append(all, sc.Name)
		switch sc.Parameters[dhpp.ParamPool] {
		case pool:
			exact = append(exact, sc)
		case "":
			generic = append(generic, sc)
		}
	}
	if len(all) == 0 {
		return "", fmt.Errorf("no StorageClass uses %s: create one, or name the class with --storage-class", dhpp.DriverName)
	}
	candidates := exact
	if len(candidates) == 0 {
		candidates = generic
	}
	for _, keep := range []func(*storagev1.StorageClass) bool{isDefaultClass, waitsForConsumer} {
		if len(candidates) < 2 {
			break
		}
		var narrowed []*storagev1.StorageClass
		for _, sc := range candidates {
			if keep(sc) {
				narrowed = append(narrowed, sc)
			}
		}
		if len(narrowed) > 0 {
			candidates = narrowed
		}
	}
	if len(candidates) == 1 {
		return candidates[0].Name, nil
	}
	return "", fmt.Errorf("cannot tell which StorageClass the claim should have (dhpp's: %s): name it with --storage-class", strings.Join(all, ", "))
}

func isDefaultClass(sc *storagev1.StorageClass) bool {
	return sc.Annotations["storageclass.kubernetes.io/is-default-class"] == "true"
}

func waitsForConsumer(sc *storagev1.StorageClass) bool {
	return sc.VolumeBindingMode != nil && *sc.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer
}

// request writes the restore request into the pool's spec (replacing an
// older one for the same entry) and waits for the driver's answer.
func request(ctx context.Context, env Env, j *restoreJob, pvName string, timeout time.Duration) (*v1.RestoreResult, error) {
	req := v1.RestoreRequest{Entry: j.entry, Claim: j.ns + "/" + j.claim, PV: pvName, RequestedAt: metav1.NewTime(env.Now().UTC().Truncate(time.Second))}
	if j.result != nil && !req.RequestedAt.After(j.result.RequestedAt.Time) {
		// A retry within the second of a failed request must be new.
		req.RequestedAt = metav1.NewTime(j.result.RequestedAt.Add(time.Second))
	}
	err := updatePool(ctx, env, j.pool.Name, func(p *v1.DhppPool) {
		rs := []v1.RestoreRequest{req}
		for _, r := range p.Spec.Restores {
			if r.Entry != j.entry {
				rs = append(rs, r)
			}
		}
		p.Spec.Restores = rs
	})
	if err != nil {
		return nil, fmt.Errorf("request the restore on DhppPool %s: %w", j.pool.Name, err)
	}
	var res *v1.RestoreResult
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, max(timeout, time.Second), true, func(ctx context.Context) (bool, error) {
		p, err := getPool(ctx, env, j.pool.Spec.Node, j.pool.Spec.Pool)
		if err != nil {
			return false, nil
		}
		for _, r := range p.Status.Restores {
			if r.Entry == j.entry && r.RequestedAt.Equal(&req.RequestedAt) {
				res = &r
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("restore requested, but the driver on node %s did not answer within %s: is it running? (kubectl dhpp doctor); run the same command again to go on",
			j.pool.Spec.Node, timeout)
	}
	if res.Phase != v1.RestoreRestored {
		_ = forget(ctx, env, j.pool.Name, j.entry)
		return nil, fmt.Errorf("the driver on node %s refused to restore %s: %s", j.pool.Spec.Node, j.entry, res.Message)
	}
	return res, nil
}

// updatePool changes a pool's spec, retrying on conflicts with the
// driver's status writes.
func updatePool(ctx context.Context, env Env, name string, change func(*v1.DhppPool)) error {
	res := env.Dyn.Resource(v1.GroupVersionResource)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		u, err := res.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		p, err := v1.FromUnstructured(u)
		if err != nil {
			return err
		}
		change(p)
		if u, err = v1.ToUnstructured(p); err != nil {
			return err
		}
		_, err = res.Update(ctx, u, metav1.UpdateOptions{})
		return err
	})
}

// forget removes the request for entry once it is done with, so the
// object stays small; the driver drops its answer with it.
func forget(ctx context.Context, env Env, pool, entry string) error {
	err := updatePool(ctx, env, pool, func(p *v1.DhppPool) {
		var rs []v1.RestoreRequest
		for _, r := range p.Spec.Restores {
			if r.Entry != entry {
				rs = append(rs, r)
			}
		}
		p.Spec.Restores = rs
	})
	if err != nil {
		return fmt.Errorf("clear the restore request on DhppPool %s: %w", pool, err)
	}
	return nil
}

// accessModes are the existing claim's, else ReadWriteOnce.
func (j *restoreJob) accessModes() []corev1.PersistentVolumeAccessMode {
	if j.pvc != nil && len(j.pvc.Spec.AccessModes) > 0 {
		return j.pvc.Spec.AccessModes
	}
	return []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
}

func (j *restoreJob) volumeMode() *corev1.PersistentVolumeMode {
	m := corev1.PersistentVolumeFilesystem
	if j.result.AccessType == "block" {
		m = corev1.PersistentVolumeBlock
	}
	return &m
}

// ensurePV creates the restored volume's PV as csi-provisioner would have:
// the driver's volume handle and context, the node affinity, reclaim
// policy Delete and provisioned-by, so deleting its claim later deletes
// the volume as for any other; pre-bound to the claim.
func ensurePV(ctx context.Context, env Env, j *restoreJob, name, class string) (*corev1.PersistentVolume, error) {
	pvs := env.Kube.CoreV1().PersistentVolumes()
	if pv, err := pvs.Get(ctx, name, metav1.GetOptions{}); err == nil {
		if pv.Spec.CSI == nil || pv.Spec.CSI.VolumeHandle != j.result.VolumeHandle {
			return nil, fmt.Errorf("PV %s exists for another volume: run the command again (it picks a free name)", name)
		}
		return pv, nil
	}
	ref := &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: j.ns, Name: j.claim}
	if j.pvc != nil {
		ref.UID = j.pvc.UID
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{annProvisionedBy: dhpp.DriverName, AnnotationRestoredFrom: j.entry}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(j.result.CapacityBytes, resource.BinarySI)},
			AccessModes:                   j.accessModes(),
			VolumeMode:                    j.volumeMode(),
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              class,
			ClaimRef:                      ref,
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: dhpp.DriverName, VolumeHandle: j.result.VolumeHandle, VolumeAttributes: j.result.VolumeContext}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: dhpp.TopologyKey, Operator: corev1.NodeSelectorOpIn, Values: []string{j.pool.Spec.Node}}},
			}}}},
		},
	}
	out, err := pvs.Create(ctx, pv, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create PV %s for the restored volume %s (it is live on node %s; run the command again to retry): %w", name, j.result.VolumeHandle, j.pool.Spec.Node, err)
	}
	return out, nil
}

// ensureClaim creates the claim, bound to pv, unless it exists.
func ensureClaim(ctx context.Context, env Env, j *restoreJob, pv *corev1.PersistentVolume) error {
	if j.pvc != nil {
		return nil
	}
	class := pv.Spec.StorageClassName
	c := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: j.claim, Namespace: j.ns, Annotations: map[string]string{AnnotationRestoredFrom: j.entry}},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      pv.Spec.AccessModes,
			VolumeMode:       pv.Spec.VolumeMode,
			StorageClassName: &class,
			VolumeName:       pv.Name,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: pv.Spec.Capacity[corev1.ResourceStorage]}},
		},
	}
	if _, err := env.Kube.CoreV1().PersistentVolumeClaims(j.ns).Create(ctx, c, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create claim %s/%s for PV %s (run the command again to retry): %w", j.ns, j.claim, pv.Name, err)
	}
	return nil
}

// waitBound waits until the claim is Bound (the PV controller binds a
// pre-bound pair within seconds).
func waitBound(ctx context.Context, env Env, ns, name string, timeout time.Duration) error {
	if timeout <= 0 {
		return nil
	}
	var phase corev1.PersistentVolumeClaimPhase
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		c, err := getClaim(ctx, env, ns, name)
		if err != nil || c == nil {
			return false, nil
		}
		phase = c.Status.Phase
		return phase == corev1.ClaimBound, nil
	})
	if err != nil {
		return fmt.Errorf("volume restored and its PV made, but claim %s/%s is still %q after %s: see kubectl describe pvc -n %s %s", ns, name, phase, timeout, ns, name)
	}
	return nil
}
