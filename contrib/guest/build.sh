#!/usr/bin/env bash
# Builds Lifeboat's test guest: a Linux kernel and an initramfs, from Debian packages only, whose
# workload is `demo-vm` (built static) writing sequenced, checksummed records to its virtio disk
# (/dev/vda) and serving /health and /state on port 8080 (`lifeboat.port=N` and
# `lifeboat.rate=N` records/s on the kernel command line for others). It powers off on ACPI (QEMU's
# `system_powerdown`). Healthy in a few seconds under TCG.
#
#   contrib/guest/build.sh OUT_DIR     # writes OUT_DIR/vmlinuz and OUT_DIR/initrd.gz
#
# Needs: apt-get (download only), dpkg-deb, gzip, busybox-static, and the Rust target
# x86_64-unknown-linux-musl. Boot it with:
#
#   qemu-system-x86_64 -accel tcg -m 256 -smp 1 -no-reboot -kernel OUT/vmlinuz \
#     -initrd OUT/initrd.gz -append "console=ttyS0 panic=-1 quiet" \
#     -drive file=disk.img,if=virtio,format=raw -netdev user,id=n0,hostfwd=tcp:127.0.0.1:8080-:8080 \
#     -device virtio-net-pci,netdev=n0 -serial file:guest.log -display none -monitor none
set -euo pipefail

out="$(realpath -m "${1:?usage: build.sh OUT_DIR}")"
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# The kernel: Debian's cloud kernel (small; virtio drivers as modules).
version="$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')"
[ -n "$version" ] || { echo "build.sh: no linux-image-cloud-amd64 in apt's lists (apt-get update?)" >&2; exit 1; }
(cd "$work" && apt-get download "$version" >/dev/null)
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
kver="${version#linux-image-}"
modules="$work/kernel/lib/modules/$kver"
# The package leaves modules.dep to its install script.
busybox depmod -b "$work/kernel" "$kver"

# The workload, static.
target_dir="${CARGO_TARGET_DIR:-$root/target}"
cargo build --manifest-path "$root/Cargo.toml" -p lifeboat-demo-vm --bin demo-vm --release \
  --target x86_64-unknown-linux-musl --quiet
demo_vm="$target_dir/x86_64-unknown-linux-musl/release/demo-vm"

# The initramfs.
init="$work/initramfs"
mkdir -p "$init"/{bin,sbin,proc,sys,dev,etc,lib/modules,tmp}
cp "$(command -v busybox)" "$init/bin/busybox"
for applet in sh mount insmod mdev ip udhcpc acpid poweroff sleep cat echo; do
  ln -s busybox "$init/bin/$applet"
done
cp "$demo_vm" "$init/bin/demo-vm"

# Each wanted module with what it depends on, dependencies first (from modules.dep).
order=()
add() {
  local m="$1" dep
  for seen in "${order[@]:-}"; do [ "$seen" = "$m" ] && return; done
  for dep in $(awk -v m="$m:" '$1 == m { for (i = 2; i <= NF; i++) print $i }' "$modules/modules.dep"); do
    add "$dep"
  done
  order+=("$m")
}
for wanted in virtio_pci virtio_blk virtio_net button evdev; do
  path="$(awk -v n="/$wanted.ko" 'index($1, n) { sub(":", "", $1); print $1; exit }' "$modules/modules.dep")"
  [ -n "$path" ] || { echo "build.sh: no module $wanted in $kver" >&2; exit 1; }
  add "$path"
done
: > "$init/lib/modules/order"
for m in "${order[@]}"; do
  name="$(basename "$m")"
  case "$name" in
    *.xz) xz -dc "$modules/$m" > "$init/lib/modules/${name%.xz}"; name="${name%.xz}" ;;
    *) cp "$modules/$m" "$init/lib/modules/$name" ;;
  esac
  echo "$name" >> "$init/lib/modules/order"
done

cat > "$init/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do insmod "/lib/modules/$m" || echo "guest: module $m did not load"; done < /lib/modules/order
mdev -s
ip link set lo up
ip link set eth0 up
udhcpc -q -n -i eth0 -s /bin/udhcpc.script >/dev/null 2>&1
acpid -d >/dev/console 2>&1 &
# The port and the records written per second from the kernel command line
# (`lifeboat.port=N`, `lifeboat.rate=N`), else 8080 and the workload's default.
port=8080
rate=50
for word in $(cat /proc/cmdline); do
  case "$word" in
    lifeboat.port=*) port="${word#lifeboat.port=}" ;;
    lifeboat.rate=*) rate="${word#lifeboat.rate=}" ;;
  esac
done
echo "guest: starting the workload on port $port ($rate records/s)"
demo-vm --disk /dev/vda --listen "0.0.0.0:$port" --rate "$rate"
echo "guest: the workload exited"
poweroff -f
INIT
chmod +x "$init/init"

cat > "$init/bin/udhcpc.script" <<'DHCP'
#!/bin/sh
[ "$1" = bound ] || [ "$1" = renew ] || exit 0
ip addr add "$ip/${mask:-24}" dev "$interface"
[ -n "$router" ] && ip route add default via "${router%% *}"
exit 0
DHCP
chmod +x "$init/bin/udhcpc.script"

# acpid runs /etc/acpi/ACTION for an event; the power button means a clean shutdown: the
# workload gets SIGTERM (it syncs), then the machine powers off.
mkdir -p "$init/etc/acpi/PWRF"
cat > "$init/etc/acpi/PWRF/00000080" <<'PWR'
#!/bin/sh
kill -TERM $(pidof demo-vm) 2>/dev/null
sleep 1
poweroff -f
PWR
chmod +x "$init/etc/acpi/PWRF/00000080"
ln -s busybox "$init/bin/pidof"
ln -s busybox "$init/bin/kill"

(cd "$init" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -9) > "$out/initrd.gz"
cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
echo "guest: $out/vmlinuz ($kver), $out/initrd.gz ($(du -h "$out/initrd.gz" | cut -f1))"
