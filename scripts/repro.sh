#!/bin/sh
# Reproducible-build check: build the image twice from the same tree, with
# the binaries rebuilt from scratch (fresh Go build cache) the second
# time, and compare every output byte for byte.
set -eu
a=$(mktemp -d) b=$(mktemp -d) cache=$(mktemp -d)
trap 'rm -rf "$a" "$b" "$cache"' EXIT
make -s OUT="$a" "$a/plinth" "$a/plinth-host" >/dev/null
GOCACHE="$cache" make -s OUT="$b" "$b/plinth" "$b/plinth-host" >/dev/null
"$a/plinth" image build --out "$a" --cache .cache/kernel >/dev/null
"$b/plinth" image build --out "$b" --cache .cache/kernel >/dev/null
fail=0
for f in plinth plinth-host vmlinuz initrd.img initrd-slot.img system.img manifest.json; do
	if cmp -s "$a/$f" "$b/$f"; then
		echo "repro: $f identical ($(sha256sum "$a/$f" | cut -c1-16))"
	else
		echo "repro: $f DIFFERS between two builds" >&2; fail=1
	fi
done
exit $fail
