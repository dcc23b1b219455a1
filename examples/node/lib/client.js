// A small weightgen client: load the API with @grpc/proto-loader, read a MaterializeRequest from its
// protobuf JSON form, stream the chunks back and reassemble them.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

import { Assembler, DIGEST_ALGORITHMS, digesters } from './assembler.js';

export { Assembler, DIGEST_ALGORITHMS, StreamError, digesters, formatLine } from './assembler.js';

/** The directory holding weightgen/v1/weightgen.proto: the repository's proto/, or $WEIGHTGEN_PROTO_ROOT. */
export const PROTO_ROOT =
  process.env.WEIGHTGEN_PROTO_ROOT ?? join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'proto');
const PROTO_FILE = 'weightgen/v1/weightgen.proto';

// Decoded messages: camelCase fields, 64-bit integers as decimal strings, enums by name, bytes as
// Buffers, every field present (defaults), oneofs naming their set member.
const LOADER_OPTIONS = { longs: String, enums: String, bytes: Buffer, defaults: true, oneofs: true, includeDirs: [PROTO_ROOT] };

let cached = null;
function api() {
  if (cached === null) {
    const definition = protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS);
    const root = new protobuf.Root();
    root.resolvePath = (_origin, target) => (target.startsWith('google/protobuf/') ? target : join(PROTO_ROOT, target));
    root.loadSync(PROTO_FILE);
    cached = {
      WeightGen: grpc.loadPackageDefinition(definition).weightgen.v1.WeightGen,
      MaterializeRequest: root.lookupType('weightgen.v1.MaterializeRequest'),
    };
  }
  return cached;
}

const camel = (key) => key.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());

// Rejects unknown fields and unknown enum names (as protobuf's JSON parsers do; protobufjs's
// fromObject would drop both silently) and accepts both JSON names (chunkBytes) and proto names
// (chunk_bytes).
function normalize(type, value, path) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new TypeError(`${path || type.name}: expected a JSON object for ${type.fullName.slice(1)}`);
  }
  const out = {};
  for (const [key, v] of Object.entries(value)) {
    const field = type.fields[camel(key)];
    const where = path ? `${path}.${key}` : key;
    if (!field) throw new TypeError(`${where}: no such field in ${type.fullName.slice(1)}`);
    field.resolve();
    if (field.repeated && v !== null) {
      if (!Array.isArray(v)) throw new TypeError(`${where}: expected a JSON array`);
      out[field.name] = v.map((item, k) => normalizeValue(field, item, `${where}[${k}]`));
    } else out[field.name] = normalizeValue(field, v, where);
  }
  return out;
}

function normalizeValue(field, v, where) {
  const t = field.resolvedType;
  if (v === null) return v;
  if (t instanceof protobuf.Type) return normalize(t, v, where);
  if (t instanceof protobuf.Enum && typeof v === 'string' && !(v in t.values)) {
    throw new TypeError(`${where}: ${JSON.stringify(v)} is not a value of ${t.fullName.slice(1)}`);
  }
  return v;
}

/** Parses a MaterializeRequest from protobuf JSON text into the plain object the client sends. */
export function parseRequest(jsonText) {
  return normalize(api().MaterializeRequest, JSON.parse(jsonText), '');
}

export function readRequest(path) {
  try {
    return parseRequest(readFileSync(path, 'utf8'));
  } catch (err) {
    err.message = `${path}: ${err.message}`;
    throw err;
  }
}

/** A WeightGen client on an insecure channel (use grpc.credentials.createSsl() for TLS). */
export function connect(address, credentials = grpc.credentials.createInsecure()) {
  return new (api().WeightGen)(address, credentials);
}

/**
 * Materialises a batch: resolves to one result per variable, in request order, each reassembled
 * and digest-checked. `digest` ('sha256', 'xxh3_128' or 'none') replaces the request's
 * digestAlgorithm; without it the request's applies (the server's default: sha256). Rejects with
 * the gRPC error (err.code, err.details) or a StreamError.
 */
export async function materialize(client, request, { timeoutSeconds = 120, digest } = {}) {
  if (digest !== undefined) {
    if (!(digest in DIGEST_ALGORITHMS)) throw new TypeError(`unknown digest algorithm '${digest}'`);
    request = { ...request, digestAlgorithm: DIGEST_ALGORITHMS[digest] };
  }
  const assembler = new Assembler((request.variables ?? []).length, await digesters());
  const deadline = new Date(Date.now() + timeoutSeconds * 1000);
  const call = client.Materialize(request, { deadline });
  try {
    for await (const chunk of call) assembler.add(chunk);
  } catch (err) {
    call.cancel();
    throw err;
  }
  return assembler.results();
}

/** gRPC's canonical name of a status code, e.g. 3 -> "INVALID_ARGUMENT". */
export function codeName(code) {
  return grpc.status[code] ?? `CODE_${code}`;
}
