/**
 * The test guest's scripts: the initramfs /init, the root disk's
 * /sbin/init and the page CGIs. Their text is part of
 * the image's input hash (builder.ts), so editing them rebuilds the image.
 */

/** Hostname when the kernel command line names none. */
export const DEFAULT_HOSTNAME = 'dormant-guest';

/** /init of the initramfs: load the drivers, mount root=, switch_root. */
export function initramfsInit(kver: string): string {
  return `#!/bin/sh
# dormant test guest: initramfs. Loads the virtio/ext4 modules, mounts the root disk, switch_roots.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "dormant-initramfs: loading modules"
while read -r m; do
  [ -n "$m" ] && { insmod "/lib/modules/${kver}/$m" || echo "dormant-initramfs: insmod $m failed"; }
done < /etc/dormant-modules
root=/dev/vda
for a in $(cat /proc/cmdline); do
  case "$a" in root=/dev/*) root="\${a#root=}" ;; esac
done
i=0
while [ ! -b "$root" ] && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
mkdir -p /newroot
if ! mount -t ext4 -o rw "$root" /newroot; then
  echo "dormant-initramfs: cannot mount $root; dropping to a shell"
  exec sh
fi
echo "dormant-initramfs: switching to $root"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
`;
}

/** /sbin/init of the root disk (PID 1). */
export function rootInit(): string {
  return `#!/bin/sh
# dormant test guest: init. Hostname from dormant.hostname=, eth0 at 10.0.2.15,
# busybox httpd on port 80, heartbeat on the serial console.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
grep -q ' /dev devtmpfs ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /run /tmp /www
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
host=${DEFAULT_HOSTNAME}
for a in $(cat /proc/cmdline); do
  case "$a" in dormant.hostname=?*) host="\${a#dormant.hostname=}" ;; esac
done
hostname "$host"
echo "$host" > /etc/hostname
# The counter lives on the disk: +1 per boot, +1 per request to /cgi-bin/status.
c=$(cat /var/counter 2>/dev/null); c=$((\${c:-0} + 1)); echo "$c" > /var/counter; sync
echo "dormant-guest: $host booted, counter $c"
# Modules the initramfs did not load (it loads them all; harmless when already there).
while read -r m; do
  [ -n "$m" ] && insmod "/lib/modules/$(uname -r)/$m" 2>/dev/null
done < /etc/dormant-modules
ip link set lo up
ip link set eth0 up
# QEMU's user network has fixed addresses: no DHCP round trip to lose under load.
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2 dev eth0
echo "nameserver 10.0.2.3" > /etc/resolv.conf
echo "dormant-guest: eth0 $(ip -4 -o addr show dev eth0 | awk '{print $4}')"
# Memory ballast (dormant.ballast=BYTES): filled before the web server starts.
ballast=0; shared=0; tick=10
for a in $(cat /proc/cmdline); do
  case "$a" in
    dormant.ballast=?*) ballast="\${a#dormant.ballast=}" ;;
    dormant.ballast_shared=?*) shared="\${a#dormant.ballast_shared=}" ;;
    dormant.tick=?*) tick="\${a#dormant.tick=}" ;;
  esac
done
while read -r k v rest; do
  case "$k" in MemTotal:) mt=$v ;; MemAvailable:) ma=$v ;; esac
done < /proc/meminfo
echo "dormant-guest: memory total $mt kB, available $ma kB"
if [ "$ballast" != 0 ]; then
  /usr/sbin/dormant-ballast "$ballast" "$shared" "$tick" "$host" &
  b=$!
  while [ ! -s /run/ballast.pid ] && kill -0 "$b" 2>/dev/null; do sleep 1; done
  [ -s /run/ballast.pid ] || echo "dormant-guest: the ballast did not start (out of memory?)"
fi
# The pages are CGIs (no file rewritten while idle): / shows hostname, uptime
# and counter; /cgi-bin/status also counts the request on the disk.
mount -t tmpfs tmpfs /www
mkdir -p /www/cgi-bin
cp /usr/share/dormant/index.cgi /www/cgi-bin/index.cgi
cp /usr/share/dormant/status.cgi /www/cgi-bin/status
chmod 755 /www/cgi-bin/index.cgi /www/cgi-bin/status
httpd -p 80 -h /www
echo "dormant-guest: httpd on port 80"
# Heartbeat on the console every 5 s, with shell builtins only (no process
# per beat: an idle guest should not fork; read -t on a FIFO nobody writes
# is a sleep that stays in the shell).
mkfifo /run/idle.fifo
(while true; do
  read -r up rest < /proc/uptime
  read -r c < /var/counter
  echo "dormant-heartbeat host=$host uptime=$up counter=$c"
  read -r -t 5 nothing <> /run/idle.fifo
done) &
# A shell on the serial console, respawned.
(while true; do setsid sh -c 'exec sh </dev/ttyS0 >/dev/ttyS0 2>&1'; sleep 1; done) &
while true; do wait; read -r -t 3600 nothing <> /run/idle.fifo; done
`;
}

/** /cgi-bin/status: counts the request on the disk, tells the ballast, answers in plain text. */
export const STATUS_CGI = `#!/bin/sh
c=$(cat /var/counter 2>/dev/null); c=$((\${c:-0} + 1)); echo "$c" > /var/counter; sync
[ -s /run/ballast.pid ] && read -r b < /run/ballast.pid && kill -USR1 "$b" 2>/dev/null
read -r up rest < /proc/uptime
printf 'Content-Type: text/plain\\r\\n\\r\\n'
echo "hostname: $(hostname)"
echo "uptime: $up s"
echo "counter: $c"
`;

/** / (busybox httpd runs cgi-bin/index.cgi for a directory without index.html): the status page, read-only. */
export const INDEX_CGI = `#!/bin/sh
[ -s /run/ballast.pid ] && read -r b < /run/ballast.pid && kill -USR1 "$b" 2>/dev/null
read -r up rest < /proc/uptime
read -r c < /var/counter
read -r host < /etc/hostname
printf 'Content-Type: text/html\\r\\n\\r\\n'
printf '<html><head><title>%s</title></head><body>\\n<h1>%s</h1>\\n<p>hostname: %s</p>\\n<p>uptime: %s s</p>\\n<p>counter: %s</p>\\n</body></html>\\n' \\
  "$host" "$host" "$host" "$up" "$c"
`;
