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
  // chunks in offset order; variables may interleave), digest on the last. Returns an error
  // message, or nothing when the chunk is fine.
  std::optional<std::string> Add(const weightgen::v1::TensorChunk& chunk);

  // Once every variable is complete: one line per variable, in request order,
  // "name\tshape(comma-separated)\tDTYPE_X\tbyte_size\tsha256hex". Sets *error otherwise.
  std::vector<std::string> Lines(std::string* error) const;

  // Variable i's reassembled bytes (empty until its last chunk has arrived).
  const std::string& Bytes(std::size_t i) const { return tensors_.at(i).data; }

 private:
  struct Tensor {
    bool started = false;
    bool done = false;
    weightgen::v1::TensorInfo info;
    std::string data;  // byte_size bytes
    std::int64_t next = 0;
    std::string digest;
  };
  std::vector<Tensor> tensors_;
};

// Lower-case hex of a byte string.
std::string Hex(const std::string& bytes);

// SHA-256 of a byte string (32 raw bytes).
std::string Sha256(const std::string& bytes);

}  // namespace weightgen_example
