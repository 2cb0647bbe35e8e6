package controller

import (
	"cmp"
	"crypto/sha256"
	"slices"
)

// Rendezvous orders items for key by the highest of a hash of each
// item's ID and key (rendezvous hashing): everyone who orders the same
// items for the same key gets the same order, and an item's leaving
// moves only the keys it was first for.
func Rendezvous[T any](items []T, id func(T) string, key string) []T {
	score := func(t T) string {
		s := sha256.Sum256([]byte(id(t) + "\x00" + key))
		return string(s[:])
	}
	sorted := slices.Clone(items)
	slices.SortStableFunc(sorted, func(a, b T) int { return cmp.Compare(score(b), score(a)) })
	return sorted
}
