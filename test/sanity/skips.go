package sanitytest

// skipGroups are the csi-sanity specs that do not apply to dhpp, grouped by
// the reason. Run fails if any other spec is skipped, or if one of these
// starts to run, so this list stays exact.
var skipGroups = []struct {
	reason string
	specs  []string
}{
	{
		reason: "dhpp has no controller attach step (CSIDriver attachRequired: false): a volume is local to its node, so there is no ControllerPublishVolume",
		specs: []string{
			"Controller Service [Controller Server] ControllerPublishVolume should fail when no node id is provided",
			"Controller Service [Controller Server] ControllerPublishVolume should fail when no volume capability is provided",
			"Controller Service [Controller Server] ControllerPublishVolume should fail when no volume id is provided",
			"Controller Service [Controller Server] ControllerPublishVolume should fail when publishing more volumes than the node max attach limit",
			"Controller Service [Controller Server] ControllerPublishVolume should fail when the node does not exist",
			"Controller Service [Controller Server] ControllerPublishVolume should fail when the volume does not exist",
			"Controller Service [Controller Server] ControllerPublishVolume should fail when the volume is already published but is incompatible",
			"Controller Service [Controller Server] ControllerUnpublishVolume should fail when no volume id is provided",
			"Controller Service [Controller Server] volume lifecycle should be idempotent",
			"Controller Service [Controller Server] volume lifecycle should work",
		},
	},
	{
		reason: "dhpp's snapshots are node-local but it does not advertise SNAPSHOT_ACCESSIBILITY_CONSTRAINTS (a snapshot's ID names its node; restores on other nodes answer ResourceExhausted), and it has no group controller (volume group snapshots)",
		specs: []string{
			"CreateSnapshot [Controller Server] should succeed when creating a snapshot with accessibility requirements",
			"GroupController Service [GroupController Server] GroupControllerGetCapabilities should return appropriate capabilities",
			"GroupController Service [GroupController VolumeGroupSnapshots] CreateVolumeGroupSnapshot should fail when no name is provided",
			"GroupController Service [GroupController VolumeGroupSnapshots] DeleteVolumeGroupSnapshot should fail when no volume id is provided",
			"GroupController Service [GroupController VolumeGroupSnapshots] DeleteVolumeGroupSnapshot should succeed when an invalid volume id is used",
			"GroupController Service [GroupController VolumeGroupSnapshots] GetVolumeGroupSnapshot should fail when an invalid volume id is used",
			"GroupController Service [GroupController VolumeGroupSnapshots] GetVolumeGroupSnapshot should fail when no volume id is provided",
		},
	},
	{
		reason: "dhpp has no mutable volume parameters (no MODIFY_VOLUME, no VolumeAttributesClass)",
		specs: []string{
			"Controller Service [Controller Server] CreateVolume should create volume with a volume attribute class",
			"Controller Service [Controller Server] CreateVolume should not create volume with an invalid volume attribute class",
			"ModifyVolume [Controller Server] should fail if no volume id is given",
			"ModifyVolume [Controller Server] should fail if specified mutable parameters are not supported by the volume",
			"ModifyVolume [Controller Server] should fail if volume does not exist",
			"ModifyVolume [Controller Server] should fail to modify a volume created with a volume attribute class if new mutable parameters are not supported by volume",
			"ModifyVolume [Controller Server] should modify a volume created with a volume attribute class",
			"ModifyVolume [Controller Server] should modify a volume created without a volume attribute class",
		},
	},
}

// CommonSkips maps every expected skip to its reason.
var CommonSkips = func() map[string]string {
	m := map[string]string{}
	for _, g := range skipGroups {
		for _, s := range g.specs {
			m[s] = g.reason
		}
	}
	return m
}()
