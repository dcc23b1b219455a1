// Reassembles the variables of one Materialize stream from their chunks and verifies each digest.
import { createHash } from 'node:crypto';

const EMPTY = Buffer.alloc(0);

/** Thrown when a stream breaks the protocol: a gap, an overrun, a digest that does not match. */
export class StreamError extends Error {}

/**
 * Feed it every TensorChunk of a Materialize stream, in the order they arrive. A variable's first
 * chunk carries its TensorInfo, each chunk's data goes at its absolute byte offset (a variable's
 * chunks come in offset order; variables may interleave), and the last carries the sha256 digest of
 * all the variable's bytes, which is checked here.
 *
 * Chunks are plain objects as @grpc/proto-loader decodes them with { longs: String, defaults: true }.
 */
export class Assembler {
  /** @param {number} variables the request's variable count */
  constructor(variables) {
    this.tensors = new Array(variables).fill(null);
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
      t = { info: chunk.info, data: Buffer.alloc(size), next: 0, digest: null };
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
      const sum = createHash('sha256').update(t.data).digest();
      const sent = chunk.digest ?? EMPTY;
      if (!sum.equals(sent)) {
        throw new StreamError(`${what}: digest mismatch: computed ${sum.toString('hex')}, server sent ${sent.toString('hex')}`);
      }
      t.digest = sum;
    }
  }

  /** Every variable, in request order, once all are complete: { name, shape, dtype, byteSize, sha256, data }. */
  results() {
    return this.tensors.map((t, i) => {
      if (t === null || t.digest === null) throw new StreamError(`variable ${i}: stream ended before its last chunk`);
      return {
        name: t.info.name,
        shape: (t.info.shape ?? []).map(String),
        dtype: t.info.dtype,
        byteSize: t.data.length,
        sha256: t.digest.toString('hex'),
        data: t.data,
      };
    });
  }
}

/** The common output line: name TAB shape (comma-separated) TAB dtype TAB byte size TAB sha256 hex. */
export function formatLine(r) {
  return [r.name, r.shape.join(','), r.dtype, r.byteSize, r.sha256].join('\t');
}
