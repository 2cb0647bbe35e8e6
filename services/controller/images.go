package controller

import (
	"fmt"
	"strings"
	"time"
)

// Image is a manifest pushed to the cluster's registry: its bytes are a
// blob, like its layers, kept on the registries of several hosts; this
// record is what every registry knows of it.
type Image struct {
	// ID is "<repository>@sha256:<hex>".
	ID   string `json:"id"`
	Repo string `json:"repo"`
	// Digest is the manifest's digest, "sha256:<hex>".
	Digest    string `json:"digest"`
	MediaType string `json:"media_type"`
	Size      int64  `json:"size"`
	// Blobs are the digests the manifest refers to: its config and
	// layers, or an index's manifests.
	Blobs  []string  `json:"blobs,omitempty"`
	Pushed time.Time `json:"pushed,omitzero"`
	Meta
}

func (i *Image) key() string { return i.ID }

// Tag names an image of a repository; pushing the tag again moves it.
type Tag struct {
	// ID is "<repository>:<tag>".
	ID     string `json:"id"`
	Repo   string `json:"repo"`
	Tag    string `json:"tag"`
	Digest string `json:"digest"`
	Meta
}

func (t *Tag) key() string { return t.ID }

// ImageID names the image digest of repo.
func ImageID(repo, digest string) string { return repo + "@" + digest }

// TagID names tag of repo.
func TagID(repo, tag string) string { return repo + ":" + tag }

func checkImage(o object) error {
	i := o.(*Image)
	switch {
	case !validRepo(i.Repo):
		return fmt.Errorf("%w: image: repository %q: use lowercase letters, digits and separators (., _, -, /)", ErrInvalid, i.Repo)
	case !validDigest(i.Digest):
		return fmt.Errorf("%w: image %s: digest %q: want sha256:<64 hex digits>", ErrInvalid, i.Repo, i.Digest)
	case i.ID != ImageID(i.Repo, i.Digest):
		return fmt.Errorf("%w: image id %q: want %q", ErrInvalid, i.ID, ImageID(i.Repo, i.Digest))
	}
	for _, b := range i.Blobs {
		if !validDigest(b) {
			return fmt.Errorf("%w: image %s: blob %q: want sha256:<64 hex digits>", ErrInvalid, i.ID, b)
		}
	}
	return nil
}

var tagName = func(s string) bool {
	if len(s) == 0 || len(s) > 128 || strings.HasPrefix(s, ".") || strings.HasPrefix(s, "-") {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-') {
			return false
		}
	}
	return true
}

func checkTag(o object) error {
	t := o.(*Tag)
	switch {
	case !validRepo(t.Repo):
		return fmt.Errorf("%w: tag: repository %q: use lowercase letters, digits and separators (., _, -, /)", ErrInvalid, t.Repo)
	case !tagName(t.Tag):
		return fmt.Errorf("%w: tag %q: use 1 to 128 of letters, digits, '_', '.', '-', not starting with '.' or '-'", ErrInvalid, t.Tag)
	case !validDigest(t.Digest):
		return fmt.Errorf("%w: tag %s: digest %q: want sha256:<64 hex digits>", ErrInvalid, t.Tag, t.Digest)
	case t.ID != TagID(t.Repo, t.Tag):
		return fmt.Errorf("%w: tag id %q: want %q", ErrInvalid, t.ID, TagID(t.Repo, t.Tag))
	}
	return nil
}
