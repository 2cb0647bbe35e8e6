package controller

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	memdb "github.com/hashicorp/go-memdb"
	"github.com/hashicorp/raft"

	"github.com/plinth-os/plinth/version"
)

// A backup file is a magic line, one JSON header line, then exactly
// Size bytes of state (the snapshot format: JSON lines, one object each)
// whose SHA-256 the header gives. The header comes first so a restore
// can refuse a file before reading its body, and the hash covers the
// body so a damaged or truncated file is refused before anything changes.
const backupMagic = "plinth-controller-backup 1\n"

// maxBackup bounds the state a restore reads into memory.
const maxBackup = 1 << 30

// BackupHeader describes a backup.
type BackupHeader struct {
	ClusterID string    `json:"cluster_id"`
	Index     uint64    `json:"index"`
	Version   string    `json:"version"`
	Time      time.Time `json:"time"`
	Size      int64     `json:"size"`
	SHA256    string    `json:"sha256"`
}

// writeBackup writes a backup of the state in txn to w.
func (c *Controller) writeBackup(w io.Writer, txn *memdb.Txn) (BackupHeader, error) {
	var body bytes.Buffer
	if err := dump(txn, json.NewEncoder(&body)); err != nil {
		return BackupHeader{}, err
	}
	var index uint64
	it, err := txn.Get(indexTable, "id")
	if err != nil {
		return BackupHeader{}, err
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		index = max(index, raw.(*tableIndex).Index)
	}
	sum := sha256.Sum256(body.Bytes())
	h := BackupHeader{ClusterID: c.clusterID, Index: index, Version: version.Version, Time: time.Now().UTC(),
		Size: int64(body.Len()), SHA256: hex.EncodeToString(sum[:])}
	line, _ := json.Marshal(h)
	if _, err := io.WriteString(w, backupMagic); err != nil {
		return h, err
	}
	if _, err := w.Write(append(line, '\n')); err != nil {
		return h, err
	}
	_, err = w.Write(body.Bytes())
	return h, err
}

// serveBackup runs on the leader (a follower forwards it), after every
// committed write is applied, so a backup holds every acknowledged write.
func (c *Controller) serveBackup(w http.ResponseWriter, r *http.Request) {
	if err := c.raft.Barrier(c.cfg.ApplyTimeout).Error(); err != nil {
		writeError(w, 0, err)
		return
	}
	txn := c.fsm.store.current().Txn(false)
	var buf bytes.Buffer
	if _, err := c.writeBackup(&buf, txn); err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Errorf("backup: %w", err))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(buf.Bytes())
}

// ReadBackup reads and checks a backup: magic, header, size and hash. It
// returns the header and the state's bytes; nothing is applied.
func ReadBackup(r io.Reader) (BackupHeader, []byte, error) {
	br := bufio.NewReader(r)
	var h BackupHeader
	magic := make([]byte, len(backupMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != backupMagic {
		return h, nil, fmt.Errorf("%w: not a plinth controller backup (made by plinth cluster backup)", ErrInvalid)
	}
	line, err := br.ReadBytes('\n')
	if err != nil {
		return h, nil, fmt.Errorf("%w: backup header: truncated", ErrInvalid)
	}
	if err := strictJSON(line, &h); err != nil {
		return h, nil, fmt.Errorf("%w: backup header: %v", ErrInvalid, err)
	}
	if h.Size < 0 || h.Size > maxBackup {
		return h, nil, fmt.Errorf("%w: backup header: size %d out of range", ErrInvalid, h.Size)
	}
	body := make([]byte, h.Size)
	if n, err := io.ReadFull(br, body); err != nil {
		return h, nil, fmt.Errorf("%w: backup truncated: %d of %d bytes of state", ErrInvalid, n, h.Size)
	}
	if n, _ := io.Copy(io.Discard, io.LimitReader(br, 1)); n > 0 {
		return h, nil, fmt.Errorf("%w: backup has data after its %d bytes of state", ErrInvalid, h.Size)
	}
	sum := sha256.Sum256(body)
	if hex.EncodeToString(sum[:]) != h.SHA256 {
		return h, nil, fmt.Errorf("%w: backup damaged: SHA-256 of its state does not match its header", ErrInvalid)
	}
	if _, err := load(json.NewDecoder(bytes.NewReader(body))); err != nil {
		return h, nil, fmt.Errorf("%w: backup state: %v", ErrInvalid, err)
	}
	return h, body, nil
}

// serveRestore replaces the whole state with a backup's, on the leader,
// which then brings every voter to it. ?force=true restores a backup of
// another cluster.
func (c *Controller) serveRestore(w http.ResponseWriter, r *http.Request) {
	force, _ := strconv.ParseBool(r.URL.Query().Get("force"))
	h, body, err := ReadBackup(io.LimitReader(r.Body, maxBackup+64<<10))
	if err != nil {
		writeError(w, 0, err)
		return
	}
	if h.ClusterID != c.clusterID && !force {
		writeError(w, http.StatusConflict, fmt.Errorf("the backup is of cluster %s, this is cluster %s: restore with --force to replace this cluster's state with it", h.ClusterID, c.clusterID))
		return
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: int64(len(body))}
	if err := c.raft.Restore(meta, bytes.NewReader(body), 0); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			writeError(w, 0, err)
			return
		}
		writeError(w, http.StatusInternalServerError, fmt.Errorf("restore did not complete, and this controller's state may already be the backup's: check plinth controller status, then restore again: %w", err))
		return
	}
	c.log.Info("state restored from a backup", "cluster", h.ClusterID, "index", h.Index, "time", h.Time)
	if _, err := c.propose(&command{Op: opTouch}); err != nil {
		// The state is restored; watches wait for each collection's
		// next change, at most their wait.
		c.log.Warn("move the indexes above those before the restore", "err", err)
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
	writeJSON(w, http.StatusOK, map[string]any{"restored": h, "index": c.raft.LastIndex()})
}
