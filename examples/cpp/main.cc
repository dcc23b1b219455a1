// weightgen-cpp: materialises a batch from a weightgen server, reassembles each tensor from its
// chunks, verifies each digest and prints one line per variable:
//
//   name<TAB>shape<TAB>dtype<TAB>byte_size<TAB>digest (hex, of --digest: sha256 by default; "-" for none)
//
// Usage: weightgen-cpp [--server HOST:PORT] [--timeout SECONDS] [--digest sha256|xxh3_128|none] REQUEST.json
//
// REQUEST.json is a MaterializeRequest in protobuf's JSON form. On a gRPC error it prints
// "error: CODE message" to stderr and exits 1; on a bad stream (a digest mismatch, a gap), exits 2.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "assembler.h"
#include "weightgen/v1/weightgen.grpc.pb.h"

namespace {

const char* CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK",        "CANCELLED",         "UNKNOWN",   "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
      "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int c = static_cast<int>(code);
  return c >= 0 && c < static_cast<int>(sizeof(kNames) / sizeof(kNames[0])) ? kNames[c] : "UNKNOWN";
}

int Usage(const char* argv0) {
  std::cerr << "usage: " << argv0
            << " [--server HOST:PORT] [--timeout SECONDS] [--digest sha256|xxh3_128|none] REQUEST.json\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string server = "127.0.0.1:50051";
  int timeout_s = 120;
  std::string path, digest;
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    std::string value;
    if ((arg == "--server" || arg == "--timeout" || arg == "--digest") && a + 1 < argc) {
      value = argv[++a];
    } else if (arg.rfind("--server=", 0) == 0 || arg.rfind("--timeout=", 0) == 0 || arg.rfind("--digest=", 0) == 0) {
      value = arg.substr(arg.find('=') + 1);
    } else if (!arg.empty() && arg[0] != '-' && path.empty()) {
      path = arg;
      continue;
    } else {
      return Usage(argv[0]);
    }
    if (arg.rfind("--server", 0) == 0) {
      server = value;
    } else if (arg.rfind("--digest", 0) == 0) {
      digest = value;
      if (digest != "sha256" && digest != "xxh3_128" && digest != "none") return Usage(argv[0]);
    } else {
      timeout_s = std::atoi(value.c_str());
      if (timeout_s <= 0) return Usage(argv[0]);
    }
  }
  if (path.empty()) return Usage(argv[0]);

  std::ifstream in(path);
  if (!in) {
    std::cerr << "error: cannot read " << path << "\n";
    return 2;
  }
  std::stringstream json;
  json << in.rdbuf();
  weightgen::v1::MaterializeRequest request;
  auto parsed = google::protobuf::util::JsonStringToMessage(json.str(), &request);
  if (!parsed.ok()) {
    std::cerr << "error: " << path << ": " << parsed.ToString() << "\n";
    return 2;
  }
  if (!digest.empty()) {
    std::string upper;
    for (char c : digest) upper.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
    weightgen::v1::DigestAlgorithm algorithm;
    weightgen::v1::DigestAlgorithm_Parse("DIGEST_ALGORITHM_" + upper, &algorithm);
    request.set_digest_algorithm(algorithm);
  }

  auto channel = grpc::CreateChannel(server, grpc::InsecureChannelCredentials());
  auto stub = weightgen::v1::WeightGen::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_s));

  weightgen_example::Assembler assembler(request.variables_size());
  auto reader = stub->Materialize(&context, request);
  weightgen::v1::TensorChunk chunk;
  while (reader->Read(&chunk)) {
    if (auto problem = assembler.Add(chunk)) {
      context.TryCancel();
      std::cerr << "error: " << *problem << "\n";
      return 2;
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    std::cerr << "error: " << CodeName(status.error_code()) << " " << status.error_message() << "\n";
    return 1;
  }
  std::string error;
  auto lines = assembler.Lines(&error);
  if (!error.empty()) {
    std::cerr << "error: " << error << "\n";
    return 2;
  }
  for (const auto& line : lines) std::cout << line << "\n";
  return 0;
}
