"""weightgen's API package, shared by server and client: the generated stubs of weightgen.proto
(`weightgen_pb2`, `weightgen_pb2_grpc`) and `wire`, the byte layout and chunk codec."""
