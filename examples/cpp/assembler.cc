#include "assembler.h"

#include <openssl/evp.h>
#include <xxhash.h>

#include <sstream>

namespace weightgen_example {

namespace {
std::string Describe(std::size_t i, const weightgen::v1::TensorInfo& info) {
  return "variable " + std::to_string(i) + " ('" + info.name() + "')";
}
}  // namespace

std::string Hex(const std::string& bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

std::string Sha256(const std::string& bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<const char*>(md), len);
}

std::string Xxh3_128(const std::string& bytes) {
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH3_128bits(bytes.data(), bytes.size()));
  return std::string(reinterpret_cast<const char*>(canonical.digest), sizeof(canonical.digest));
}

std::string DigestOf(const std::string& algorithm, const std::string& bytes, bool* known) {
  *known = true;
  if (algorithm == "sha256") return Sha256(bytes);
  if (algorithm == "xxh3_128") return Xxh3_128(bytes);
  *known = algorithm == "none";
  return "";
}

std::optional<std::string> Assembler::Add(const weightgen::v1::TensorChunk& chunk) {
  const std::size_t i = chunk.variable_index();
  if (i >= tensors_.size()) {
    return "chunk for variable " + std::to_string(i) + ", but the request has " + std::to_string(tensors_.size());
  }
  Tensor& t = tensors_[i];
  if (!t.started) {
    if (!chunk.has_info()) return "variable " + std::to_string(i) + ": first chunk carries no info";
    if (chunk.info().byte_size() < 0) return Describe(i, chunk.info()) + ": negative byte_size";
    t.algorithm = chunk.info().digest_algorithm().empty() ? "sha256" : chunk.info().digest_algorithm();
    bool known = false;
    DigestOf(t.algorithm, "", &known);
    if (!known) return Describe(i, chunk.info()) + ": unsupported digest algorithm '" + t.algorithm + "'";
    t.started = true;
    t.info = chunk.info();
    t.data.assign(static_cast<std::size_t>(t.info.byte_size()), '\0');
  } else if (chunk.has_info()) {
    return Describe(i, t.info) + ": info on a chunk that is not the first";
  }
  if (t.done) return Describe(i, t.info) + ": chunk after the last one";
  const std::int64_t end = chunk.offset() + static_cast<std::int64_t>(chunk.data().size());
  if (chunk.offset() != t.next || end > static_cast<std::int64_t>(t.data.size())) {
    std::ostringstream msg;
    msg << Describe(i, t.info) << ": chunk [" << chunk.offset() << ", " << end << ") does not follow " << t.next
        << " within " << t.data.size() << " bytes";
    return msg.str();
  }
  t.data.replace(static_cast<std::size_t>(chunk.offset()), chunk.data().size(), chunk.data());
  t.next = end;
  if (chunk.last()) {
    if (t.next != static_cast<std::int64_t>(t.data.size())) {
      return Describe(i, t.info) + ": last chunk at " + std::to_string(t.next) + " of " +
             std::to_string(t.data.size()) + " bytes";
    }
    bool known = false;
    std::string sum = DigestOf(t.algorithm, t.data, &known);
    if (sum != chunk.digest()) {
      return Describe(i, t.info) + ": " + t.algorithm + " digest mismatch: computed " + Hex(sum) + ", server sent " +
             Hex(chunk.digest());
    }
    t.digest = sum;
    t.done = true;
  }
  return std::nullopt;
}

std::vector<std::string> Assembler::Lines(std::string* error) const {
  std::vector<std::string> lines;
  for (std::size_t i = 0; i < tensors_.size(); ++i) {
    const Tensor& t = tensors_[i];
    if (!t.done) {
      *error = "variable " + std::to_string(i) + ": stream ended before its last chunk";
      return {};
    }
    std::ostringstream line;
    line << t.info.name() << '\t';
    for (int d = 0; d < t.info.shape_size(); ++d) line << (d ? "," : "") << t.info.shape(d);
    line << '\t' << weightgen::v1::DType_Name(t.info.dtype()) << '\t' << t.data.size() << '\t'
         << (t.algorithm == "none" ? std::string("-") : Hex(t.digest));
    lines.push_back(line.str());
  }
  return lines;
}

}  // namespace weightgen_example
