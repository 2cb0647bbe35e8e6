package boot

import (
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/host/slots"
	"github.com/plinth-os/plinth/image"
	"github.com/plinth-os/plinth/init/devmapper"
)

// paramSlot names the disk slot this boot runs (its boot entry sets it).
// Without it, the system image is the one inside the initramfs.
const paramSlot = slots.SlotParam

// slotWait bounds stage 1's wait for the slot's partition: the disk
// driver probes asynchronously, which took seconds in a loaded TCG guest.
const slotWait = 2 * time.Minute

// mountSlot mounts the system image of a disk slot at dir: it waits for
// the slot's partition, checks the signed manifest in its header against
// the keys this initramfs trusts, and mounts the squashfs through a
// dm-verity device made with the manifest's root hash, so that every
// block is checked by the kernel when it is first read and nothing is
// hashed up front. Any failure stops the boot; the boot loader's tries
// then bring the machine back to the other slot.
func mountSlot(slot, dir string) error {
	name := slots.PartName(slot)
	dev, err := waitPartition(name)
	if err != nil {
		return err
	}
	keyData, err := os.ReadFile(image.TrustedKeysPath)
	if err != nil {
		return fmt.Errorf("this initramfs has no trusted keys (%w): it cannot check slot %s", err, slot)
	}
	keys, err := image.ParseTrustedKeys(keyData)
	if err != nil {
		return err
	}
	f, err := os.Open(dev)
	if err != nil {
		return fmt.Errorf("open slot %s: %w", slot, err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err == nil {
		var man, sig []byte
		if man, sig, err = image.ReadSlotHeader(f, size); err == nil {
			var m *image.Manifest
			if m, err = image.VerifyManifest(man, sig, keys); err == nil {
				err = mountVerity(dev, "plinth-"+slot, m, dir)
				if err == nil {
					phase("stage1: slot %s (%s, %s) checked and mounted through dm-verity", slot, dev, m.Version)
				}
			}
		}
	}
	f.Close()
	if err != nil {
		return fmt.Errorf("slot %s (%s): %w", slot, dev, err)
	}
	return nil
}

func mountVerity(dev, name string, m *image.Manifest, dir string) error {
	if err := m.System.Validate(); err != nil {
		return err
	}
	sectors, typ, params := m.System.Table(dev)
	vdev, err := devmapper.Create(name, true, devmapper.Target{Start: 0, Length: sectors, Type: typ, Params: params})
	if err != nil {
		return err
	}
	return mount(vdev, dir, "squashfs", unix.MS_RDONLY|unix.MS_NODEV, "")
}

// waitPartition waits for the partition named name to appear.
func waitPartition(name string) (string, error) {
	start := time.Now()
	next := start.Add(10 * time.Second)
	for {
		// devtmpfs makes the node just after sysfs shows the partition.
		if dev := slots.FindPartition("/sys", name); dev != "" {
			if _, err := os.Stat(dev); err == nil {
				return dev, nil
			}
		}
		now := time.Now()
		if now.Sub(start) > slotWait {
			return "", fmt.Errorf("no partition named %s appeared within %s", name, slotWait)
		}
		if now.After(next) {
			say("waiting for partition %s (%s so far)", name, now.Sub(start).Round(time.Second))
			next = now.Add(10 * time.Second)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
