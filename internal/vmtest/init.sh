#!/bin/sh
# /init of the dhpp vmtest guest (see doc.go). It prepares a minimal system,
# runs /work/vmtest-run.sh (written by the host for one test), stores its exit
# code in /work/vmtest-exit for the host, and powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
echo "vmtest: init at $(cut -d' ' -f1 /proc/uptime)s"
while read -r mod args; do
	insmod "$mod" $args || echo "vmtest: insmod $mod failed"
done < /etc/vmtest/modules
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 work /work; then
	echo "vmtest: cannot mount the 9p share"
	poweroff -f
fi
echo "vmtest: ready at $(cut -d' ' -f1 /proc/uptime)s"
cd /
/bin/sh /work/vmtest-run.sh
rc=$?
echo "$rc" > /work/vmtest-exit
echo "vmtest: exit $rc at $(cut -d' ' -f1 /proc/uptime)s"
sync
poweroff -f
