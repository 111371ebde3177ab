#!/bin/sh
# gpumod: kernel memory reserve for GPU boxes, as a sysctl.d drop-in (idempotent).
#
# A model load pins host memory; when the kernel cannot find contiguous free pages the NVIDIA
# driver can hang and freeze the whole host with no OOM message.  Keeping 1 GiB free for the
# kernel (vm.min_free_kbytes = 1048576) makes such allocations fail cleanly instead.
#
# usage: install-gpumod-sysctl.sh [--root DIR] [--kbytes N] [--no-apply]
#   --root DIR   install under DIR instead of / (nothing live is touched then)
#   --kbytes N   the reserve in kB (default 1048576)
#   --no-apply   write the drop-in but do not run `sysctl --system`
# Prints one line per item: "changed PATH", "ok PATH", "applied ...". Exit 0 on success.
set -eu
case " $* " in
  *" --root "*|*" --root="*) ;;
  *) if [ "$(id -u)" != 0 ]; then exec sudo -n -- "$0" "$@"; fi ;;
esac
root=/ kbytes=1048576 apply=yes
while [ $# -gt 0 ]; do
  case $1 in
    --root) root=$2; shift 2 ;;
    --root=*) root=${1#*=}; shift ;;
    --kbytes) kbytes=$2; shift 2 ;;
    --kbytes=*) kbytes=${1#*=}; shift ;;
    --no-apply) apply=no; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install-gpumod-sysctl: unknown argument: $1" >&2; exit 2 ;;
  esac
done
case $kbytes in ''|*[!0-9]*) echo "install-gpumod-sysctl: --kbytes must be a number of kB, got '$kbytes'" >&2; exit 2 ;; esac
root=${root%/}
file="$root/etc/sysctl.d/90-gpumod.conf"
want="# Installed by gpumod (install-gpumod-sysctl.sh); do not edit, re-run it instead.
# Keep memory free for the kernel so that pinned-memory allocations by GPU drivers fail
# cleanly instead of freezing the host.
vm.min_free_kbytes = $kbytes"
changed=no
if [ -f "$file" ] && [ "$(cat "$file")" = "$want" ]; then
  echo "ok $file"
else
  mkdir -p "$(dirname "$file")"
  tmp=$(mktemp "$file.XXXXXX")
  printf '%s\n' "$want" > "$tmp"
  chmod 644 "$tmp"
  mv -f "$tmp" "$file"
  echo "changed $file"
  changed=yes
fi
if [ -n "$root" ]; then
  echo "note not applied: installed under --root $root"
elif [ "$apply" = yes ]; then
  live=$(cat /proc/sys/vm/min_free_kbytes 2>/dev/null || echo 0)
  if [ "$changed" = yes ] || [ "$live" -lt "$kbytes" ]; then
    sysctl --system > /dev/null
    echo "applied vm.min_free_kbytes=$(cat /proc/sys/vm/min_free_kbytes) kB (sysctl --system)"
  fi
fi
