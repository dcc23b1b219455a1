// Reassembles the variables of one Materialize stream from their chunks and verifies each digest.
import { createHash } from 'node:crypto';

import { createXXHash128 } from 'hash-wasm';

const EMPTY = Buffer.alloc(0);

/** The algorithms a request may name (MaterializeRequest.digest_algorithm), by TensorInfo.digest_algorithm. */
export const DIGEST_ALGORITHMS = {
  sha256: 'DIGEST_ALGORITHM_SHA256',
  xxh3_128: 'DIGEST_ALGORITHM_XXH3_128',
  none: 'DIGEST_ALGORITHM_NONE',
};

/**
 * The digest functions (bytes -> Buffer) by TensorInfo.digest_algorithm: SHA-256 from node:crypto,
 * XXH3-128 (its canonical 16 bytes, big-endian) from hash-wasm, whose hasher is made asynchronously.
 */
export async function digesters() {
  const xxh128 = await createXXHash128();
  return {
    sha256: (data) => createHash('sha256').update(data).digest(),
    xxh3_128: (data) => Buffer.from(xxh128.init().update(data).digest('binary')),
  };
}

/** Thrown when a stream breaks the protocol: a gap, an overrun, a digest that does not match. */
export class StreamError extends Error {}

/**
 * Feed it every TensorChunk of a Materialize stream, in the order they arrive. A variable's first
 * chunk carries its TensorInfo, each chunk's data goes at its absolute byte offset (a variable's
 * chunks come in offset order; variables may interleave), and the last carries the digest of all
 * the variable's bytes in the algorithm its TensorInfo names (sha256 when it names none, xxh3_128,
 * or none: no digest), which is checked here with `digests` (see `digesters()`; SHA-256 alone when
 * not given).
 *
 * Chunks are plain objects as @grpc/proto-loader decodes them with { longs: String, defaults: true }.
 */
export class Assembler {
  /**
   * @param {number} variables the request's variable count
   * @param {Object<string, function(Buffer): Buffer>} [digests] digest functions by algorithm name
   */
  constructor(variables, digests = { sha256: (data) => createHash('sha256').update(data).digest() }) {
    this.tensors = new Array(variables).fill(null);
    this.digests = digests;
  }

  add(chunk) {
    const i = chunk.variableIndex ?? 0;
    if (i >= this.tensors.length) {
      throw new StreamError(`chunk for variable ${i}, but the request has ${this.tensors.length}`);
    }
    let t = this.tensors[i];
    if (t === null) {
      if (!chunk.info) throw new StreamError(`variable ${i}: first chunk carries no info`);
      const size = Number(chunk.info.byteSize ?? 0);
      if (!Number.isSafeInteger(size) || size < 0) {
        throw new StreamError(`variable ${i}: bad byte_size ${chunk.info.byteSize}`);
      }
      const algorithm = chunk.info.digestAlgorithm || 'sha256';
      if (algorithm !== 'none' && !this.digests[algorithm]) {
        throw new StreamError(`variable ${i}: unsupported digest algorithm '${algorithm}'`);
      }
      t = { info: chunk.info, algorithm, data: Buffer.alloc(size), next: 0, digest: null };
      this.tensors[i] = t;
    } else if (chunk.info) {
      throw new StreamError(`variable ${i} ('${t.info.name}'): info on a chunk that is not the first`);
    }
    const what = `variable ${i} ('${t.info.name}')`;
    if (t.digest !== null) throw new StreamError(`${what}: chunk after the last one`);
    const data = chunk.data ?? EMPTY;
    const offset = Number(chunk.offset ?? 0);
    const end = offset + data.length;
    if (offset !== t.next || end > t.data.length) {
      throw new StreamError(`${what}: chunk [${offset}, ${end}) does not follow ${t.next} within ${t.data.length} bytes`);
    }
    data.copy(t.data, offset);
    t.next = end;
    if (chunk.last) {
      if (t.next !== t.data.length) {
        throw new StreamError(`${what}: last chunk at ${t.next} of ${t.data.length} bytes`);
      }
      const sent = chunk.digest ?? EMPTY;
      const sum = t.algorithm === 'none' ? EMPTY : this.digests[t.algorithm](t.data);
      if (!sum.equals(sent)) {
        throw new StreamError(
          `${what}: ${t.algorithm} digest mismatch: computed ${sum.toString('hex')}, server sent ${sent.toString('hex')}`,
        );
      }
      t.digest = sum;
    }
  }

  /**
   * Every variable, in request order, once all are complete: { name, shape, dtype, byteSize,
   * digestAlgorithm, digest (hex; '-' for none), data }.
   */
  results() {
    return this.tensors.map((t, i) => {
      if (t === null || t.digest === null) throw new StreamError(`variable ${i}: stream ended before its last chunk`);
      return {
        name: t.info.name,
        shape: (t.info.shape ?? []).map(String),
        dtype: t.info.dtype,
        byteSize: t.data.length,
        digestAlgorithm: t.algorithm,
        digest: t.algorithm === 'none' ? '-' : t.digest.toString('hex'),
        data: t.data,
      };
    });
  }
}

/**
 * The common output line: name TAB shape (comma-separated) TAB dtype TAB byte size TAB the verified
 * digest in hex (of the algorithm asked for: sha256 by default; '-' for none).
 */
export function formatLine(r) {
  return [r.name, r.shape.join(','), r.dtype, r.byteSize, r.digest].join('\t');
}
