package verity

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

var testSalt = []byte{0x5a, 0x17, 0x00, 0xfe, 0x42}

// sizes cover no tree (1 block), one leaf block exactly full (128), one
// entry short of it (127), a second leaf block (129), padding (odd sizes)
// and a two-level tree (~3 MB).
var sizes = []int{
	BlockSize,
	127 * BlockSize,
	128 * BlockSize,
	129 * BlockSize,
	5*BlockSize + 123,
	3_000_000,
}

// testData is deterministic pseudo-random content.
func testData(size int, seed uint64) []byte {
	b := make([]byte, size)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(b)
	return b
}

func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func appendTo(t *testing.T, data, salt []byte) (string, Params) {
	t.Helper()
	path := writeTemp(t, "image", data)
	p, err := Append(path, salt)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatalf("Append returned invalid params: %v", err)
	}
	return path, p
}

func sha(parts ...[]byte) []byte {
	h := sha256.New()
	for _, b := range parts {
		h.Write(b)
	}
	return h.Sum(nil)
}

// The format written out by hand: the salt goes first, one block needs
// no tree, entries are packed and their block zero-padded, and an odd
// size is padded with zeros that are covered by the tree.
func TestFormatByHand(t *testing.T) {
	t.Run("one block", func(t *testing.T) {
		data := testData(BlockSize, 1)
		path, p := appendTo(t, data, testSalt)
		if got, want := p.RootHash, hex.EncodeToString(sha(testSalt, data)); got != want {
			t.Errorf("root hash %s, want sha256(salt || block) = %s", got, want)
		}
		out, _ := os.ReadFile(path)
		if !bytes.Equal(out, data) {
			t.Errorf("file is %d bytes after Append, want the %d data bytes unchanged and no tree", len(out), len(data))
		}
	})
	t.Run("two blocks, odd size", func(t *testing.T) {
		data := testData(BlockSize+100, 2)
		path, p := appendTo(t, data, testSalt)
		padded := append(bytes.Clone(data), make([]byte, BlockSize-100)...)
		tree := make([]byte, BlockSize)
		copy(tree, sha(testSalt, padded[:BlockSize]))
		copy(tree[digestSize:], sha(testSalt, padded[BlockSize:]))
		want := append(padded, tree...)
		out, _ := os.ReadFile(path)
		if !bytes.Equal(out, want) {
			t.Errorf("file after Append differs from data + zero padding + one hash block")
		}
		if p.HashOffset != 2*BlockSize || p.DataBlocks != 2 {
			t.Errorf("hash_offset %d, data_blocks %d; want %d, 2", p.HashOffset, p.DataBlocks, 2*BlockSize)
		}
		if got, want := p.RootHash, hex.EncodeToString(sha(testSalt, tree)); got != want {
			t.Errorf("root hash %s, want sha256(salt || hash block) = %s", got, want)
		}
	})
}

// What veritysetup 2.6.1 wrote for testData(size, 7) padded to blocks,
// salt testSalt: the root hash and the SHA-256 of the whole file (data and
// tree), so format and layout are pinned where veritysetup is missing too.
func TestGoldenOutput(t *testing.T) {
	for _, tc := range []struct {
		size       int
		root, file string
	}{
		{
			129 * BlockSize,
			"2f3a1e33f7d705501c02721aadd2c08b5cdc4121071948ea502120461ccceada",
			"0f0d3eb6bb467f299448a63f36ec4453d091f792c6bee0e2b382379c93f89bfc",
		},
		{
			3_000_000,
			"556a6b2f38236b3a8f02cd26f1a6a2f1838869ef1b57ad79eadc769f7eea6e44",
			"be34ba0899df6acdc39249b7d5b294d837ffd1d0c2ef2d63147e406d81e1c39a",
		},
	} {
		path, p := appendTo(t, testData(tc.size, 7), testSalt)
		if p.RootHash != tc.root {
			t.Errorf("%d bytes: root hash %s, veritysetup's is %s", tc.size, p.RootHash, tc.root)
		}
		out, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if sum := hex.EncodeToString(sha(out)); sum != tc.file {
			t.Errorf("%d bytes: output file's sha256 is %s, veritysetup's is %s", tc.size, sum, tc.file)
		}
	}
}

func TestAppendIsReproducible(t *testing.T) {
	data := testData(300*BlockSize+1, 3)
	path1, p1 := appendTo(t, data, nil)
	path2, p2 := appendTo(t, data, nil)
	if p1 != p2 {
		t.Errorf("params differ between two builds of the same data:\n%+v\n%+v", p1, p2)
	}
	out1, _ := os.ReadFile(path1)
	out2, _ := os.ReadFile(path2)
	if !bytes.Equal(out1, out2) {
		t.Error("output differs between two builds of the same data")
	}
	if p1.Salt == "" {
		t.Error("no salt derived for a nil salt")
	}
	data[0] ^= 1
	if _, p3 := appendTo(t, data, nil); p3.Salt == p1.Salt {
		t.Error("different data got the same derived salt")
	}
}

func TestAppendRefusesEmptyFile(t *testing.T) {
	path := writeTemp(t, "empty", nil)
	if _, err := Append(path, nil); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("Append on an empty file: %v, want an error saying it is empty", err)
	}
}

// flip inverts one byte of the file at off.
func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func verifyFile(t *testing.T, path string, p Params) error {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return Verify(f, p)
}

func copyFile(t *testing.T, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	return writeTemp(t, filepath.Base(src)+".copy", b)
}

func TestVerify(t *testing.T) {
	for _, size := range sizes {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			path, p := appendTo(t, testData(size, 4), testSalt)
			if err := verifyFile(t, path, p); err != nil {
				t.Fatalf("Verify rejects Append's output: %v", err)
			}
			s := shapeOf(p)

			// A byte in the last data block, so a check that stopped
			// early would miss it.
			last := p.DataBlocks - 1
			corrupt := copyFile(t, path)
			flip(t, corrupt, int64(last*BlockSize+17))
			err := verifyFile(t, corrupt, p)
			if want := fmt.Sprintf("data block %d ", last); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("flipped byte in data block %d: Verify says %v, want an error naming %q", last, err, want)
			}
			veritysetupRejects(t, corrupt, p)

			// A byte in each level's last block: blamed on that block,
			// not on the blocks it covers.
			for i := range s.levels {
				j := s.levels[i] - 1
				corrupt := copyFile(t, path)
				flip(t, corrupt, int64(p.HashOffset+s.levelStart(i)+j*BlockSize+5))
				err := verifyFile(t, corrupt, p)
				if want := fmt.Sprintf("hash block %d of tree level %d ", j, i); err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("flipped byte in hash block %d of level %d: Verify says %v, want an error naming %q", j, i, err, want)
				}
				veritysetupRejects(t, corrupt, p)
			}

			other := p
			other.RootHash = hex.EncodeToString(make([]byte, digestSize))
			if err := verifyFile(t, path, other); err == nil || !strings.Contains(err.Error(), "root hash") {
				t.Errorf("wrong root hash: Verify says %v, want an error about the root hash", err)
			}
		})
	}
}

func TestVerifyTruncated(t *testing.T) {
	path, p := appendTo(t, testData(200*BlockSize, 5), testSalt)
	if err := os.Truncate(path, int64(p.HashOffset+BlockSize)); err != nil {
		t.Fatal(err)
	}
	if err := verifyFile(t, path, p); err == nil || !strings.Contains(err.Error(), "read hash tree") {
		t.Errorf("Verify on a truncated tree: %v, want a read error", err)
	}
}

func TestValidate(t *testing.T) {
	good := Params{
		Algorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 4096,
		DataBlocks: 10, HashOffset: 40960,
		Salt: "00ff", RootHash: strings.Repeat("ab", 32),
	}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid params rejected: %v", err)
	}
	for _, tc := range []struct {
		change func(*Params)
		want   string
	}{
		{func(p *Params) { p.Algorithm = "sha1" }, `unsupported hash algorithm "sha1"`},
		{func(p *Params) { p.DataBlockSize = 3000 }, "data_block_size 3000 is not a power of two"},
		{func(p *Params) { p.HashBlockSize = 256 }, "hash_block_size 256 is not a power of two between 512"},
		{func(p *Params) { p.DataBlocks = 0 }, "data_blocks is 0"},
		{func(p *Params) { p.DataBlocks = 1 << 62 }, "exceed the largest device size"},
		{func(p *Params) { p.HashOffset = 4096 }, "hash_offset 4096 lies inside the data, which ends at byte 40960"},
		{func(p *Params) { p.HashOffset = 40960 + 512 }, "not a multiple of hash_block_size"},
		{func(p *Params) { p.HashOffset = 1<<63 - 4096 }, "beyond the largest device size"},
		{func(p *Params) { p.Salt = "xyz" }, "salt is not hex"},
		{func(p *Params) { p.Salt = strings.Repeat("00", 257) }, "salt is 257 bytes"},
		{func(p *Params) { p.RootHash = "abcd" }, "root_hash is 2 bytes"},
		{func(p *Params) { p.RootHash = "" }, "root_hash is 0 bytes"},
	} {
		p := good
		tc.change(&p)
		if err := p.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: Validate says %v, want %q", p, err, tc.want)
		}
	}
	// Empty salt is allowed: the kernel's "-".
	p := good
	p.Salt = ""
	if err := p.Validate(); err != nil {
		t.Errorf("empty salt rejected: %v", err)
	}
}

func TestTable(t *testing.T) {
	root := strings.Repeat("ab", 32)
	p := Params{
		Algorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 4096,
		DataBlocks: 733, HashOffset: 733 * 4096, Salt: "00ff", RootHash: root,
	}
	sectors, typ, params := p.Table("/dev/vda2")
	if sectors != 733*8 || typ != "verity" {
		t.Errorf("target %d sectors of %q, want %d of \"verity\"", sectors, typ, 733*8)
	}
	if want := "1 /dev/vda2 /dev/vda2 4096 4096 733 733 sha256 " + root + " 00ff"; params != want {
		t.Errorf("params\n%s\nwant\n%s", params, want)
	}
	p.Salt = ""
	if _, _, params := p.Table("/dev/vda2"); !strings.HasSuffix(params, root+" -") {
		t.Errorf("empty salt gives %q, want the salt written as -", params)
	}
}

// The reference: veritysetup (cryptsetup) writes and checks the same tree.

func veritysetup(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("veritysetup")
	if err != nil {
		t.Skip("veritysetup not found; apt-get install cryptsetup-bin to compare with the reference")
	}
	return path
}

// veritysetupArgs are the flags that describe p's tree to veritysetup:
// --hash-offset is in bytes, like HashOffset (veritysetup rounds it down
// to a hash block, which Validate refuses to need).
func veritysetupArgs(p Params) []string {
	salt := p.Salt
	if salt == "" {
		salt = "-"
	}
	return []string{
		"--no-superblock",
		"--hash=" + p.Algorithm,
		fmt.Sprintf("--data-block-size=%d", p.DataBlockSize),
		fmt.Sprintf("--hash-block-size=%d", p.HashBlockSize),
		fmt.Sprintf("--data-blocks=%d", p.DataBlocks),
		fmt.Sprintf("--hash-offset=%d", p.HashOffset),
		"--salt=" + salt,
	}
}

func veritysetupVerify(t *testing.T, path string, p Params) error {
	args := append([]string{"verify"}, veritysetupArgs(p)...)
	args = append(args, path, path, p.RootHash)
	out, err := exec.Command(veritysetup(t), args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("veritysetup %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// veritysetupRejects checks that the reference agrees a corrupted file is
// corrupt, so our failing Verify is not failing for its own reasons.
func veritysetupRejects(t *testing.T, path string, p Params) {
	t.Helper()
	if _, err := exec.LookPath("veritysetup"); err != nil {
		return
	}
	if veritysetupVerify(t, path, p) == nil {
		t.Errorf("veritysetup verify accepts the corrupted file %s", path)
	}
}

var rootHashLine = regexp.MustCompile(`(?m)^Root hash:\s+([0-9a-f]+)$`)

func TestAgainstVeritysetup(t *testing.T) {
	bin := veritysetup(t)
	all := slices.Clone(sizes)
	if !testing.Short() {
		all = append(all, 128*128*BlockSize+BlockSize) // three levels, 64 MiB
	}
	for _, size := range all {
		for _, salt := range [][]byte{testSalt, nil} {
			name := fmt.Sprintf("%d/salt=%x", size, salt)
			if salt == nil {
				name = fmt.Sprintf("%d/derived-salt", size)
			}
			t.Run(name, func(t *testing.T) {
				data := testData(size, 6)
				path, p := appendTo(t, data, salt)

				// veritysetup formats the same padded data in place.
				padded := append(bytes.Clone(data), make([]byte, int(p.HashOffset)-len(data))...)
				ref := writeTemp(t, "ref", padded)
				args := append([]string{"format"}, veritysetupArgs(p)...)
				args = append(args, ref, ref)
				out, err := exec.Command(bin, args...).CombinedOutput()
				if err != nil {
					t.Fatalf("veritysetup %s: %v\n%s", strings.Join(args, " "), err, out)
				}
				m := rootHashLine.FindSubmatch(out)
				if m == nil {
					t.Fatalf("no root hash in veritysetup's output:\n%s", out)
				}
				if string(m[1]) != p.RootHash {
					t.Errorf("root hash %s, veritysetup's is %s", p.RootHash, m[1])
				}
				mine, _ := os.ReadFile(path)
				theirs, _ := os.ReadFile(ref)
				if !bytes.Equal(mine, theirs) {
					t.Errorf("Append wrote %d bytes, veritysetup %d, and they differ", len(mine), len(theirs))
				}
				if err := veritysetupVerify(t, path, p); err != nil {
					t.Errorf("veritysetup rejects Append's output: %v", err)
				}
			})
		}
	}
}
