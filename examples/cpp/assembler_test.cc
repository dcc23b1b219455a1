// Unit tests of the Assembler (no server needed): interleaving, zero-size variables, bad streams.
#include <iostream>
#include <string>
#include <vector>

#include "assembler.h"

using weightgen::v1::TensorChunk;
using weightgen_example::Assembler;
using weightgen_example::Hex;
using weightgen_example::Sha256;
using weightgen_example::Xxh3_128;

namespace {

int failures = 0;

void Check(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "FAIL: " << what << "\n";
    ++failures;
  }
}

TensorChunk Chunk(int index, long offset, const std::string& data, const char* name = nullptr, long size = 0) {
  TensorChunk c;
  c.set_variable_index(index);
  c.set_offset(offset);
  c.set_data(data);
  if (name != nullptr) {
    c.mutable_info()->set_name(name);
    c.mutable_info()->set_byte_size(size);
    c.mutable_info()->set_dtype(weightgen::v1::DTYPE_INT8);
    c.mutable_info()->add_shape(size);
  }
  return c;
}

TensorChunk WithAlgorithm(TensorChunk c, const std::string& algorithm) {
  c.mutable_info()->set_digest_algorithm(algorithm);
  return c;
}

std::string Unhex(const std::string& hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

TensorChunk Last(TensorChunk c, const std::string& digest) {
  c.set_last(true);
  c.set_digest(digest);
  return c;
}

bool Rejects(std::vector<TensorChunk> chunks) {
  Assembler a(1);
  for (const auto& c : chunks) {
    if (a.Add(c)) return true;
  }
  std::string error;
  a.Lines(&error);
  return !error.empty();
}

}  // namespace

int main() {
  Assembler a(3);
  const std::string x = "abcdefgh", y = "0123";
  Check(!a.Add(Chunk(0, 0, x.substr(0, 4), "a", 8)), "first chunk of a");
  Check(!a.Add(Last(Chunk(1, 0, y, "b", 4), Sha256(y))), "b whole");
  Check(!a.Add(Last(Chunk(2, 0, "", "empty", 0), Sha256(""))), "zero-size");
  Check(!a.Add(Last(Chunk(0, 4, x.substr(4)), Sha256(x))), "last chunk of a");
  std::string error;
  auto lines = a.Lines(&error);
  Check(error.empty() && lines.size() == 3, "three lines");
  Check(lines.size() == 3 &&
            lines[0] == "a\t8\tDTYPE_INT8\t8\t9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab",
        "line of a: " + (lines.empty() ? std::string() : lines[0]));
  Check(a.Bytes(0) == x, "bytes of a");

  Check(Rejects({Last(Chunk(0, 0, "xy", "v", 2), Sha256("xz"))}), "digest mismatch");
  Check(Rejects({Chunk(0, 0, "x", "v", 2), Last(Chunk(0, 2, ""), Sha256("x"))}), "gap");
  Check(Rejects({Last(Chunk(0, 0, "x", "v", 2), Sha256("x"))}), "short");
  Check(Rejects({Last(Chunk(0, 0, "xy"), Sha256("xy"))}), "no info");
  Check(Rejects({Last(Chunk(5, 0, "", "v", 0), Sha256(""))}), "index out of range");
  Check(Rejects({Chunk(0, 0, "x", "v", 2)}), "incomplete");

  // XXH3-128 of "" and "abc" in canonical form, as Python's xxhash and `xxhsum -H2` print them.
  const std::string kEmpty = "99aa06d3014798d86001c324468d497f", kAbc = "06b05ab6733a618578af5f94892f3950";
  Check(Hex(Xxh3_128("abc")) == kAbc, "xxh3_128(abc): " + Hex(Xxh3_128("abc")));
  Assembler x3(3);
  Check(!x3.Add(WithAlgorithm(Chunk(0, 0, "ab", "abc", 3), "xxh3_128")), "first chunk of abc");
  Check(!x3.Add(Last(WithAlgorithm(Chunk(1, 0, "", "empty", 0), "xxh3_128"), Unhex(kEmpty))), "xxh3 zero-size");
  Check(!x3.Add(Last(Chunk(0, 2, "c"), Unhex(kAbc))), "last chunk of abc");
  Check(!x3.Add(Last(WithAlgorithm(Chunk(2, 0, "xyz", "none", 3), "none"), "")), "none");
  error.clear();
  lines = x3.Lines(&error);
  Check(error.empty() && lines.size() == 3 && lines[0] == "abc\t3\tDTYPE_INT8\t3\t" + kAbc &&
            lines[1] == "empty\t0\tDTYPE_INT8\t0\t" + kEmpty && lines[2] == "none\t3\tDTYPE_INT8\t3\t-",
        "xxh3 and none lines");
  std::string flipped = Unhex(kAbc);
  flipped[15] ^= 1;
  Check(Rejects({Last(WithAlgorithm(Chunk(0, 0, "abc", "v", 3), "xxh3_128"), flipped)}), "xxh3 mismatch");
  Check(Rejects({Last(WithAlgorithm(Chunk(0, 0, "abc", "v", 3), "xxh3_128"), Sha256("abc"))}), "sha256 for xxh3");
  Check(Rejects({Last(WithAlgorithm(Chunk(0, 0, "abc", "v", 3), "crc32"), "")}), "unknown algorithm");
  Check(Rejects({Last(WithAlgorithm(Chunk(0, 0, "abc", "v", 3), "none"), Unhex(kAbc))}), "digest with none");

  std::cout << (failures ? "FAILED" : "ok") << "\n";
  return failures ? 1 : 0;
}
