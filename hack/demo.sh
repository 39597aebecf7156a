#!/usr/bin/env bash
# The README's first command, until the local cluster demo replaces it:
# dhpp-driver on a loop-backed btrfs "data disk", walked through one volume's
# life with grpcurl (the CSI calls the kubelet and csi-provisioner make), and
# left running so you can try more calls yourself.
#
#   hack/demo.sh up     build, make the disk, start the driver, run the walkthrough
#   hack/demo.sh down   stop the driver, unmount and remove everything
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${DHPP_DEMO_DIR:-/tmp/dhpp-demo}"
cache="${DHPP_CACHE:-$HOME/.cache/dhpp}"
grpcurl="$cache/bin/grpcurl"

need_root() { [ "$(id -u)" = 0 ] || { echo "demo: needs root (loop device, mounts)" >&2; exit 1; }; }

down() {
	need_root
	if [ -f "$dir/driver.pid" ]; then
		kill "$(cat "$dir/driver.pid")" 2>/dev/null || true
		sleep 1
	fi
	# Volumes first (loop volumes sit on loop devices inside the disk), then the disk.
	grep -o " $dir/[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
	for d in $(losetup -j "$dir/disk.img" -O NAME -n 2>/dev/null); do losetup -d "$d" || true; done
	rm -rf "$dir"
	echo "demo: removed $dir"
}

call() { # call SERVICE/METHOD JSON
	echo "+ $1 $2"
	"$grpcurl" -plaintext -unix -import-path "$proto" -proto csi.proto -d "$2" "$dir/csi.sock" "csi.v1.$1"
}

up() {
	need_root
	[ -e "$dir" ] && down >/dev/null
	mkdir -p "$dir" "$cache/bin"
	[ -x "$grpcurl" ] || GOBIN="$cache/bin" go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4
	proto="$(go list -m -f '{{.Dir}}' github.com/container-storage-interface/spec)"
	cp bin/dhpp-driver "$dir/"

	echo "== a 4 GiB btrfs data disk on a loop device, pool directory on it"
	truncate -s 4G "$dir/disk.img"
	mkfs.btrfs -q -f "$dir/disk.img"
	mkdir -p "$dir/disk" && mount -o loop "$dir/disk.img" "$dir/disk" && mkdir -p "$dir/disk/dhpp"

	echo "== dhpp-driver (log: $dir/driver.log)"
	"$dir/dhpp-driver" --endpoint="unix://$dir/csi.sock" --node-id=demo-node \
		--pool="default=$dir/disk/dhpp" --kubelet-registration=false \
		--metrics-address=127.0.0.1:9808 --trash-retention=1m --v=2 >"$dir/driver.log" 2>&1 &
	echo $! >"$dir/driver.pid"
	for _ in $(seq 50); do [ -S "$dir/csi.sock" ] && break; sleep 0.1; done

	local vol='"volume_id":"demo-node/default/pvc-demo"'
	local mnt='"volume_capability":{"mount":{},"access_mode":{"mode":"SINGLE_NODE_WRITER"}}'
	call Identity/GetPluginInfo '{}'
	call Controller/GetCapacity '{}'
	call Controller/CreateVolume '{"name":"pvc-demo","capacity_range":{"required_bytes":67108864},"volume_capabilities":[{"mount":{},"access_mode":{"mode":"SINGLE_NODE_WRITER"}}],"parameters":{"pool":"default","mode":"0777"},"accessibility_requirements":{"requisite":[{"segments":{"topology.dhpp.io/node":"demo-node"}}]}}'
	call Node/NodeStageVolume "{$vol,\"staging_target_path\":\"$dir/staging\",$mnt}"
	call Node/NodePublishVolume "{$vol,\"staging_target_path\":\"$dir/staging\",\"target_path\":\"$dir/target\",$mnt}"

	echo "== the pod's view: $dir/target; writing 100 MiB into a 64 MiB volume"
	if dd if=/dev/zero of="$dir/target/big" bs=1M count=100 conv=fsync status=none 2>"$dir/dd.err"; then
		echo "!! the write was not stopped"; exit 1
	fi
	echo "   stopped as it should: $(cat "$dir/dd.err")"
	rm -f "$dir/target/big"; sync
	call Node/NodeGetVolumeStats "{$vol,\"volume_path\":\"$dir/target\"}"
	call Controller/ControllerExpandVolume "{$vol,\"capacity_range\":{\"required_bytes\":134217728}}"
	call Node/NodeExpandVolume "{$vol,\"volume_path\":\"$dir/target\",\"capacity_range\":{\"required_bytes\":134217728}}"
	call Controller/ListVolumes '{}'
	echo "== on disk, the volume describes itself:"
	cat "$dir/disk/dhpp/volumes/pvc-demo/volume.json"
	echo
	echo "dhpp-driver is running on unix://$dir/csi.sock (metrics: http://127.0.0.1:9808/metrics)."
	echo "Try:  $grpcurl -plaintext -unix -import-path $proto -proto csi.proto $dir/csi.sock csi.v1.Controller/ListVolumes"
	echo "Stop and clean up:  make demo-down"
}

case "${1:-up}" in
up) up ;;
down) down ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
