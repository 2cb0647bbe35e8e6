package image

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
)

// The data partition's filesystem is made once, at build time, as a small
// ext4 template that the system image carries: a running plinth host has
// no mkfs, yet `plinth host install` must leave an ext4 filesystem on the
// disk it writes. The installer copies the template to the start of the
// data partition and PID 1 grows it online to the partition at its first
// mount (EXT4_IOC_RESIZE_FS).

// DataTemplatePath is where the system image carries the template.
const DataTemplatePath = "/usr/lib/plinth/data.ext4"

// DataTemplateSize is the template's size: one full block group (32768
// blocks of 4 KiB), so that the inodes per group chosen for it give the
// usual one inode per 16 KiB in every group the grow adds, and room for a
// 32 MiB journal (mkfs.ext4 refuses a journal of half the filesystem).
// Only a few of its blocks are not zero: the file is sparse and adds
// little to the squashfs, which stores zero blocks as holes.
const DataTemplateSize = 128 << 20

// dataTemplateConf is the mke2fs.conf the template is made with, so that
// the builder's /etc/mke2fs.conf does not change the bytes.
// metadata_csum_seed keeps the checksums independent of the UUID, which
// each install changes (image/disk), and resize_inode with the largest
// reservation lets the kernel grow the filesystem in place to 8 TiB; past
// that it converts it to meta_bg as it grows. 8192 inodes per group bound
// it to 2^32 inodes, 64 TiB.
const dataTemplateConf = `[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,metadata_csum_seed,64bit,dir_nlink,extra_isize
	}
	plinth = {
		inode_ratio = 16384
	}
`

// Fixed identity of the template; installs give each disk its own UUID
// and hash seed.
const (
	dataTemplateUUID     = "5a6e1d0c-9b57-4f2e-8d3a-7c41b2e9f680"
	dataTemplateHashSeed = "c3f0a9d2-4e61-4b85-a7d9-0e2b6f1c8a47"
	// dataTemplateTime is 1980-01-01 UTC, the FAT epoch the disk writer
	// also uses for reproducible disks.
	dataTemplateTime = 315532800
)

// BuildDataTemplate makes the data partition's ext4 template at path
// with mkfs.ext4 (e2fsprogs): label PLINTH-DATA, 4 KiB blocks, a 32 MiB
// journal, 1% of the blocks reserved for root. The same e2fsprogs makes
// the same bytes.
func BuildDataTemplate(ctx context.Context, path string) error {
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return fmt.Errorf("the data partition template needs mkfs.ext4: apt-get install e2fsprogs")
	}
	conf, err := os.CreateTemp("", "plinth-mke2fs-*.conf")
	if err != nil {
		return err
	}
	defer os.Remove(conf.Name())
	if _, err := conf.WriteString(dataTemplateConf); err != nil {
		conf.Close()
		return err
	}
	if err := conf.Close(); err != nil {
		return err
	}
	// A fresh sparse file: mkfs.ext4 discards it (punching holes), sees
	// that discarded blocks read as zeros and leaves the inode table and
	// journal unwritten, so the template stays sparse.
	os.Remove(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	err = f.Truncate(DataTemplateSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("data template: %w", err)
	}
	cmd := exec.CommandContext(ctx, mkfs, "-q", "-F", "-t", "ext4", "-T", "plinth",
		"-b", "4096", "-L", "PLINTH-DATA", "-N", "8192", "-m", "1", "-J", "size=32",
		"-U", dataTemplateUUID,
		"-E", "hash_seed="+dataTemplateHashSeed+",resize=4294967295",
		path)
	// E2FSPROGS_FAKE_TIME is e2fsprogs' clock override: it fixes the
	// superblock and inode times.
	cmd.Env = append(os.Environ(), "MKE2FS_CONFIG="+conf.Name(),
		"E2FSPROGS_FAKE_TIME="+strconv.Itoa(dataTemplateTime))
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(path)
		return fmt.Errorf("data template: mkfs.ext4: %w\n%s", err, out)
	}
	return nil
}
