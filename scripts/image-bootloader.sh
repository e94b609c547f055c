#!/usr/bin/env bash
# image-bootloader.sh RAW TREE: partition RAW and make it boot from the disk alone, under legacy BIOS
# and under UEFI (EC2 Nitro boots either: register the AMI with --boot-mode uefi-preferred, or
# legacy-bios / uefi), with GRUB 2 from Debian's grub-pc-bin and grub-efi-amd64-bin:
#   p1  BIOS boot (1 MiB)  GRUB's core.img for BIOS; boot.img in the MBR points at it
#   p2  ESP (32 MiB, FAT)  \EFI\BOOT\BOOTX64.EFI, the removable-media path any UEFI firmware boots
#   p3  root (ext4)        TREE, with /boot/grub/grub.cfg and both platforms' GRUB modules
# Both core images only find the root file system by its UUID and read /boot/grub/grub.cfg from
# it. That boots /vmlinuz and /initrd.img, the symlinks Debian's kernel packages keep on the newest
# kernel, so a kernel upgrade on the host needs no update-grub (and no grub package in the image).
# Done without a loop device or a mount: the core images are built by grub-mkimage; the
# MBR's boot.img and the BIOS core image's first blocklist are patched as grub-bios-setup would
# for an embedded core.img (grub-bios-setup insists on probing the build host's own root disk);
# the ESP is filled with mtools at its offset, the root with mke2fs -d at its offset.
set -euo pipefail
RAW=$1 TREE=$2
GRUB=/usr/lib/grub
for f in "$GRUB/i386-pc/boot.img" "$GRUB/x86_64-efi/linux.mod" /usr/bin/mformat /usr/bin/grub-mkimage; do
    [ -e "$f" ] || { echo "image-bootloader: $f missing (apt-get install grub-pc-bin grub-efi-amd64-bin mtools)" >&2; exit 1; }
done
BIOS_START=2048 ESP_START=4096 ESP_SECTORS=65536 ROOT_START=69632
printf 'label: gpt\nstart=%s, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios\nstart=%s, size=%s, type=uefi, name=esp\nstart=%s, type=linux, name=root\n' \
    $BIOS_START $ESP_START $ESP_SECTORS $ROOT_START | sfdisk -q "$RAW"
ROOT_SECTORS=$(sfdisk -J "$RAW" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][2]["size"])')
UUID=$(python3 -c 'import uuid; print(uuid.uuid4())')

echo "UUID=$UUID / ext4 defaults 0 1" > "$TREE/etc/fstab"
for platform in i386-pc x86_64-efi; do
    mkdir -p "$TREE/boot/grub/$platform"
    cp "$GRUB/$platform/"*.mod "$GRUB/$platform/"*.lst "$TREE/boot/grub/$platform/"
done
# The console on the first serial port (EC2's serial console, the VM test's) and on the screen.
cat > "$TREE/boot/grub/grub.cfg" <<CFG
# written by make image (scripts/image-bootloader.sh); /vmlinuz and /initrd.img follow the newest kernel
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set timeout=1
if [ "\$grub_platform" = efi ]; then insmod all_video; fi  # else Linux starts "in blind mode"
menuentry 'Debian GNU/Linux 12 (titus-node host)' {
    search --no-floppy --fs-uuid --set=root $UUID
    linux /vmlinuz root=UUID=$UUID ro console=tty0 console=ttyS0,115200 quiet systemd.show_status=0
    initrd /initrd.img
}
CFG
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
printf 'search --no-floppy --fs-uuid --set=root %s\nset prefix=($root)/boot/grub\n' "$UUID" > "$WORK/early.cfg"
MODS="part_gpt ext2 search search_fs_uuid normal linux serial terminal echo test"
grub-mkimage -O i386-pc -o "$WORK/core.img" -c "$WORK/early.cfg" -p /boot/grub biosdisk $MODS
grub-mkimage -O x86_64-efi -o "$WORK/BOOTX64.EFI" -c "$WORK/early.cfg" -p /boot/grub $MODS

python3 - "$RAW" "$GRUB/i386-pc/boot.img" "$WORK/core.img" $BIOS_START <<'PY'
import struct, sys
raw, boot_img, core_img, start = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
boot = bytearray(open(boot_img, "rb").read())
core = bytearray(open(core_img, "rb").read())
sectors = (len(core) + 511) // 512
if sectors > 2048:
    sys.exit(f"image-bootloader: core.img is {sectors} sectors, more than the 1 MiB BIOS boot partition")
# boot.img: the LBA of core.img's first sector (GRUB_BOOT_MACHINE_KERNEL_SECTOR), and the hard-disk
# boot-drive workaround on (the jmp over it at GRUB_BOOT_MACHINE_DRIVE_CHECK becomes two nops).
struct.pack_into("<Q", boot, 0x5C, start)
assert boot[0x66] == 0xEB, "unexpected boot.img"
boot[0x66:0x68] = b"\x90\x90"
# core.img's first sector (diskboot.img) loads the rest from its blocklist at the sector's end:
# grub-mkimage wrote {start: 2, len: sectors - 1, segment: 0x820}, for a core.img at LBA 1.
off = 512 - 12
first, length, segment = struct.unpack_from("<QHH", core, off)
assert (first, length, segment) == (2, sectors - 1, 0x820), (first, length, segment)
struct.pack_into("<QHH", core, off, start + 1, sectors - 1, 0x820)
with open(raw, "r+b") as f:
    f.write(boot[:440])  # the rest of sector 0 is the protective MBR's partition table: kept
    f.seek(start * 512)
    f.write(core)
PY

mformat -i "$RAW@@$((ESP_START * 512))" -T $ESP_SECTORS -h 1 -s 32 -v ESP ::
mmd -i "$RAW@@$((ESP_START * 512))" ::/EFI ::/EFI/BOOT
mcopy -i "$RAW@@$((ESP_START * 512))" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mke2fs -q -t ext4 -L titus-root -U "$UUID" -d "$TREE" -E offset=$((ROOT_START * 512)) "$RAW" $((ROOT_SECTORS / 2))k
echo "image-bootloader: GRUB for BIOS (MBR + BIOS boot partition) and UEFI (ESP), root UUID=$UUID"
