package main

// XXH3-128 through cgo, from Debian's libxxhash-dev (xxHash's reference C library): Debian packages
// no Go implementation of XXH3 (golang-github-cespare-xxhash-dev is XXH64 only), and the build
// uses Debian's packages only (no module proxy).

// #cgo pkg-config: libxxhash
// #include <xxhash.h>
import "C"

import "unsafe"

// xxh3Sum128 returns XXH3-128 (seed 0) of data in its canonical form: the high 64 bits, then the
// low 64 bits, each big-endian (XXH128_canonicalFromHash), as TensorChunk.digest carries it.
func xxh3Sum128(data []byte) []byte {
	var p unsafe.Pointer
	if len(data) > 0 {
		p = unsafe.Pointer(&data[0])
	}
	h := C.XXH3_128bits(p, C.size_t(len(data)))
	var canonical C.XXH128_canonical_t
	C.XXH128_canonicalFromHash(&canonical, h)
	return C.GoBytes(unsafe.Pointer(&canonical.digest[0]), 16)
}
