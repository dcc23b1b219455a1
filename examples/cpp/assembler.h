// Reassembles the variables of one Materialize stream from their chunks and verifies each digest.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "weightgen/v1/weightgen.pb.h"

namespace weightgen_example {

class Assembler {
 public:
  // Expects `variables` variables (the request's variable count).
  explicit Assembler(std::size_t variables) : tensors_(variables) {}

  // Takes one chunk: info on a variable's first chunk, data at its absolute offset (one variable's
  // chunks in offset order; variables may interleave), digest on the last, checked with the
  // algorithm the info names (sha256 when it names none, xxh3_128; none: the digest must be
  // empty). Returns an error message, or nothing when the chunk is fine.
  std::optional<std::string> Add(const weightgen::v1::TensorChunk& chunk);

  // Once every variable is complete: one line per variable, in request order,
  // "name\tshape(comma-separated)\tDTYPE_X\tbyte_size\tdigesthex" (the verified digest, of the
  // algorithm asked for; "-" for none). Sets *error otherwise.
  std::vector<std::string> Lines(std::string* error) const;

  // Variable i's reassembled bytes (empty until its last chunk has arrived).
  const std::string& Bytes(std::size_t i) const { return tensors_.at(i).data; }

 private:
  struct Tensor {
    bool started = false;
    bool done = false;
    weightgen::v1::TensorInfo info;
    std::string algorithm;  // of the digest: info.digest_algorithm, "sha256" when empty
    std::string data;       // byte_size bytes
    std::int64_t next = 0;
    std::string digest;
  };
  std::vector<Tensor> tensors_;
};

// Lower-case hex of a byte string.
std::string Hex(const std::string& bytes);

// SHA-256 of a byte string (32 raw bytes), from OpenSSL.
std::string Sha256(const std::string& bytes);

// XXH3-128 (seed 0) of a byte string in canonical form (16 raw bytes: the high 64 bits, then the
// low 64 bits, big-endian), from libxxhash.
std::string Xxh3_128(const std::string& bytes);

// The digest of `bytes` by the algorithm TensorInfo.digest_algorithm names ("sha256", "xxh3_128";
// "none" gives ""). Sets *known to false (and returns "") for any other name.
std::string DigestOf(const std::string& algorithm, const std::string& bytes, bool* known);

}  // namespace weightgen_example
