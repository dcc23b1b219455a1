package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	wg "weightgen/v1"
)

// digests are the algorithms TensorInfo.digest_algorithm may name, besides "none" (no digest).
var digests = map[string]func([]byte) []byte{
	"sha256": func(b []byte) []byte {
		s := sha256.Sum256(b)
		return s[:]
	},
	"xxh3_128": xxh3Sum128,
}

// tensor is one variable being reassembled from its chunks.
type tensor struct {
	info      *wg.TensorInfo
	algorithm string // of its digest: TensorInfo.digest_algorithm, "sha256" when empty
	data      []byte
	next      int64 // the offset the next chunk must start at
	done      bool
	digest    []byte
}

// Assembler reassembles the variables of one Materialize stream and verifies their digests.
type Assembler struct {
	tensors []*tensor
}

// NewAssembler expects n variables (len(MaterializeRequest.variables)).
func NewAssembler(n int) *Assembler {
	return &Assembler{tensors: make([]*tensor, n)}
}

// Add takes one chunk: info on a variable's first chunk, data at its absolute offset (chunks of one
// variable in offset order), digest on its last, which is checked against the reassembled bytes
// with the algorithm the info names (sha256, xxh3_128; none: the digest must be empty).
func (a *Assembler) Add(c *wg.TensorChunk) error {
	i := int(c.GetVariableIndex())
	if i >= len(a.tensors) {
		return fmt.Errorf("chunk for variable %d, but the request has %d", i, len(a.tensors))
	}
	t := a.tensors[i]
	if t == nil {
		if c.GetInfo() == nil {
			return fmt.Errorf("variable %d: first chunk carries no info", i)
		}
		size := c.GetInfo().GetByteSize()
		if size < 0 {
			return fmt.Errorf("variable %d: negative byte_size %d", i, size)
		}
		algorithm := c.GetInfo().GetDigestAlgorithm()
		if algorithm == "" {
			algorithm = "sha256"
		}
		if _, ok := digests[algorithm]; !ok && algorithm != "none" {
			return fmt.Errorf("variable %d: unsupported digest algorithm %q", i, algorithm)
		}
		t = &tensor{info: c.GetInfo(), algorithm: algorithm, data: make([]byte, size)}
		a.tensors[i] = t
	} else if c.GetInfo() != nil {
		return fmt.Errorf("variable %d (%q): info on a chunk that is not the first", i, t.info.GetName())
	}
	name := t.info.GetName()
	if t.done {
		return fmt.Errorf("variable %d (%q): chunk after the last one", i, name)
	}
	end := c.GetOffset() + int64(len(c.GetData()))
	if c.GetOffset() != t.next || end > int64(len(t.data)) {
		return fmt.Errorf("variable %d (%q): chunk [%d, %d) does not follow %d within %d bytes",
			i, name, c.GetOffset(), end, t.next, len(t.data))
	}
	copy(t.data[c.GetOffset():end], c.GetData())
	t.next = end
	if c.GetLast() {
		if t.next != int64(len(t.data)) {
			return fmt.Errorf("variable %d (%q): last chunk at %d of %d bytes", i, name, t.next, len(t.data))
		}
		var sum []byte
		if t.algorithm != "none" {
			sum = digests[t.algorithm](t.data)
		}
		if !bytes.Equal(sum, c.GetDigest()) {
			return fmt.Errorf("variable %d (%q): %s digest mismatch: computed %x, server sent %x",
				i, name, t.algorithm, sum, c.GetDigest())
		}
		t.done = true
		t.digest = sum
	}
	return nil
}

// Lines returns one line per variable, in request order, once every variable is complete:
// name TAB shape (comma-separated) TAB dtype TAB byte size TAB the verified digest in hex (of the
// algorithm asked for: sha256 by default; "-" for none).
func (a *Assembler) Lines() ([]string, error) {
	lines := make([]string, 0, len(a.tensors))
	for i, t := range a.tensors {
		if t == nil || !t.done {
			return nil, fmt.Errorf("variable %d: stream ended before its last chunk", i)
		}
		dims := make([]string, len(t.info.GetShape()))
		for j, d := range t.info.GetShape() {
			dims[j] = strconv.FormatInt(d, 10)
		}
		digest := hex.EncodeToString(t.digest)
		if t.algorithm == "none" {
			digest = "-"
		}
		lines = append(lines, strings.Join([]string{
			t.info.GetName(),
			strings.Join(dims, ","),
			t.info.GetDtype().String(),
			strconv.Itoa(len(t.data)),
			digest,
		}, "\t"))
	}
	return lines, nil
}

// Bytes returns variable i's reassembled bytes (nil until its last chunk has arrived).
func (a *Assembler) Bytes(i int) []byte {
	if t := a.tensors[i]; t != nil && t.done {
		return t.data
	}
	return nil
}
