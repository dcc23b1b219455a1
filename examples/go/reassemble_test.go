package main

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	wg "weightgen/v1"
)

func digest(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func info(name string, size int64, shape ...int64) *wg.TensorInfo {
	return &wg.TensorInfo{Name: name, Shape: shape, Dtype: wg.DType_DTYPE_FLOAT32, ByteSize: size}
}

func TestInterleavedChunks(t *testing.T) {
	a, b := []byte("abcdefgh"), []byte("0123")
	asm := NewAssembler(3)
	chunks := []*wg.TensorChunk{
		{VariableIndex: 0, Offset: 0, Data: a[:4], Info: info("a", 8, 2)},
		{VariableIndex: 1, Offset: 0, Data: b, Info: info("b", 4, 1), Last: true, Digest: digest(b)},
		{VariableIndex: 2, Offset: 0, Info: info("empty", 0, 0, 3), Last: true, Digest: digest(nil)},
		{VariableIndex: 0, Offset: 4, Data: a[4:], Last: true, Digest: digest(a)},
	}
	for _, c := range chunks {
		if err := asm.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	lines, err := asm.Lines()
	if err != nil {
		t.Fatal(err)
	}
	want := "a\t2\tDTYPE_FLOAT32\t8\t9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab"
	if lines[0] != want || !strings.HasPrefix(lines[2], "empty\t0,3\tDTYPE_FLOAT32\t0\te3b0c442") {
		t.Fatalf("unexpected lines %q", lines)
	}
	if string(asm.Bytes(0)) != "abcdefgh" {
		t.Fatalf("bytes %q", asm.Bytes(0))
	}
}

func TestRejectsBadStreams(t *testing.T) {
	cases := map[string][]*wg.TensorChunk{
		"digest": {{Offset: 0, Data: []byte("xy"), Info: info("v", 2), Last: true, Digest: digest([]byte("xz"))}},
		"gap":    {{Offset: 0, Data: []byte("x"), Info: info("v", 2)}, {Offset: 2, Data: nil, Last: true}},
		"short":  {{Offset: 0, Data: []byte("x"), Info: info("v", 2), Last: true, Digest: digest([]byte("x"))}},
		"noinfo": {{Offset: 0, Data: []byte("xy"), Last: true}},
		"index":  {{VariableIndex: 5, Info: info("v", 0), Last: true}},
	}
	for name, chunks := range cases {
		asm := NewAssembler(1)
		var err error
		for _, c := range chunks {
			if err = asm.Add(c); err != nil {
				break
			}
		}
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewAssembler(1).Lines(); err == nil {
		t.Error("incomplete stream accepted")
	}
}

// XXH3-128 of "" and of "abc" in canonical form, as Python's xxhash and `xxhsum -H2` print them.
const (
	xxh3Empty = "99aa06d3014798d86001c324468d497f"
	xxh3ABC   = "06b05ab6733a618578af5f94892f3950"
)

func infoWith(name string, size int64, algorithm string) *wg.TensorInfo {
	i := info(name, size, size)
	i.DigestAlgorithm = algorithm
	return i
}

func unhex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func TestXXH3Digests(t *testing.T) {
	if got := hex.EncodeToString(xxh3Sum128([]byte("abc"))); got != xxh3ABC {
		t.Fatalf("xxh3Sum128(abc) = %s, want %s", got, xxh3ABC)
	}
	asm := NewAssembler(3)
	chunks := []*wg.TensorChunk{
		{VariableIndex: 0, Data: []byte("ab"), Info: infoWith("abc", 3, "xxh3_128")},
		{VariableIndex: 1, Info: infoWith("empty", 0, "xxh3_128"), Last: true, Digest: unhex(xxh3Empty)},
		{VariableIndex: 0, Offset: 2, Data: []byte("c"), Last: true, Digest: unhex(xxh3ABC)},
		{VariableIndex: 2, Data: []byte("xyz"), Info: infoWith("none", 3, "none"), Last: true},
	}
	for _, c := range chunks {
		if err := asm.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	lines, err := asm.Lines()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(lines[0], "\t3\t"+xxh3ABC) || !strings.HasSuffix(lines[1], "\t0\t"+xxh3Empty) ||
		!strings.HasSuffix(lines[2], "\t3\t-") {
		t.Fatalf("unexpected lines %q", lines)
	}
}

func TestRejectsBadDigests(t *testing.T) {
	flipped := unhex(xxh3ABC)
	flipped[15] ^= 1
	cases := map[string]*wg.TensorChunk{
		"xxh3 mismatch":     {Data: []byte("abc"), Info: infoWith("v", 3, "xxh3_128"), Last: true, Digest: flipped},
		"sha256 for xxh3":   {Data: []byte("abc"), Info: infoWith("v", 3, "xxh3_128"), Last: true, Digest: digest([]byte("abc"))},
		"unknown algorithm": {Data: []byte("abc"), Info: infoWith("v", 3, "crc32"), Last: true},
		"digest with none":  {Data: []byte("abc"), Info: infoWith("v", 3, "none"), Last: true, Digest: unhex(xxh3ABC)},
	}
	for name, c := range cases {
		if err := NewAssembler(1).Add(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
