// Unit tests of the reassembly and digest checks: no server needed.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';

import { Assembler, StreamError, digesters, formatLine } from '../lib/assembler.js';

const sha = (b) => createHash('sha256').update(b).digest();
const info = (name, byteSize, shape = [String(byteSize)]) => ({ name, shape, dtype: 'DTYPE_INT8', byteSize: String(byteSize) });
const chunk = (variableIndex, offset, data, extra = {}) => ({
  variableIndex,
  offset: String(offset),
  data: Buffer.from(data),
  info: null,
  last: false,
  digest: Buffer.alloc(0),
  ...extra,
});

test('reassembles interleaved variables by offset and a zero-size one', () => {
  const a = Buffer.from('abcdefgh');
  const asm = new Assembler(3);
  asm.add(chunk(0, 0, a.subarray(0, 3), { info: info('a', 8, ['2', '4']) }));
  asm.add(chunk(1, 0, '', { info: info('empty', 0, ['0', '16']), last: true, digest: sha('') }));
  asm.add(chunk(0, 3, a.subarray(3, 6)));
  asm.add(chunk(2, 0, 'xyz', { info: info('c', 3), last: true, digest: sha('xyz') }));
  asm.add(chunk(0, 6, a.subarray(6), { last: true, digest: sha(a) }));
  const results = asm.results();
  assert.deepEqual(results[0].data, a);
  assert.deepEqual(
    results.map(formatLine),
    [
      'a\t2,4\tDTYPE_INT8\t8\t9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab',
      'empty\t0,16\tDTYPE_INT8\t0\te3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
      `c\t3\tDTYPE_INT8\t3\t${sha('xyz').toString('hex')}`,
    ],
  );
});

const rejects = {
  'a digest mismatch': [chunk(0, 0, 'xy', { info: info('v', 2), last: true, digest: sha('xz') })],
  'a gap between chunks': [chunk(0, 0, 'x', { info: info('v', 2) }), chunk(0, 2, '', { last: true, digest: sha('x') })],
  'an overrun': [chunk(0, 0, 'xyz', { info: info('v', 2), last: true, digest: sha('xyz') })],
  'a short variable': [chunk(0, 0, 'x', { info: info('v', 2), last: true, digest: sha('x') })],
  'a first chunk without info': [chunk(0, 0, 'xy', { last: true, digest: sha('xy') })],
  'info twice': [chunk(0, 0, 'x', { info: info('v', 2) }), chunk(0, 1, 'y', { info: info('v', 2) })],
  'an unknown variable index': [chunk(4, 0, '', { info: info('v', 0), last: true, digest: sha('') })],
  'a chunk after the last': [
    chunk(0, 0, 'xy', { info: info('v', 2), last: true, digest: sha('xy') }),
    chunk(0, 2, '', { last: true, digest: sha('xy') }),
  ],
};

for (const [what, chunks] of Object.entries(rejects)) {
  test(`rejects ${what}`, () => {
    const asm = new Assembler(1);
    assert.throws(() => chunks.forEach((c) => asm.add(c)), StreamError);
  });
}

test('rejects a stream that ends before a variable is complete', () => {
  const asm = new Assembler(2);
  asm.add(chunk(0, 0, '', { info: info('v', 0), last: true, digest: sha('') }));
  assert.throws(() => asm.results(), /variable 1: stream ended/);
});

// XXH3-128 of '' and of 'abc' in canonical form, as Python's xxhash (libxxhash 0.8) and `xxhsum -H2` print them.
const XXH3_EMPTY = '99aa06d3014798d86001c324468d497f';
const XXH3_ABC = '06b05ab6733a618578af5f94892f3950';
const xinfo = (name, byteSize, digestAlgorithm) => ({ ...info(name, byteSize), digestAlgorithm });

test('verifies xxh3_128 digests against known values', async () => {
  const asm = new Assembler(3, await digesters());
  asm.add(chunk(0, 0, 'ab', { info: xinfo('abc', 3, 'xxh3_128') }));
  asm.add(chunk(1, 0, '', { info: xinfo('empty', 0, 'xxh3_128'), last: true, digest: Buffer.from(XXH3_EMPTY, 'hex') }));
  asm.add(chunk(0, 2, 'c', { last: true, digest: Buffer.from(XXH3_ABC, 'hex') }));
  asm.add(chunk(2, 0, 'xyz', { info: xinfo('sha', 3, 'sha256'), last: true, digest: sha('xyz') }));
  const [abc, empty, other] = asm.results();
  assert.equal(abc.digest, XXH3_ABC);
  assert.equal(abc.digestAlgorithm, 'xxh3_128');
  assert.equal(empty.digest, XXH3_EMPTY);
  assert.equal(other.digest, sha('xyz').toString('hex'));
});

test('rejects an xxh3_128 mismatch, an unknown algorithm, and a digest with none', async () => {
  const digests = await digesters();
  const flipped = Buffer.from(XXH3_ABC, 'hex');
  flipped[15] ^= 1;
  let asm = new Assembler(1, digests);
  assert.throws(() => asm.add(chunk(0, 0, 'abc', { info: xinfo('v', 3, 'xxh3_128'), last: true, digest: flipped })), /xxh3_128 digest mismatch/);
  asm = new Assembler(1, digests);
  assert.throws(() => asm.add(chunk(0, 0, 'abc', { info: xinfo('v', 3, 'crc32'), last: true })), /unsupported digest algorithm 'crc32'/);
  asm = new Assembler(1, digests);
  assert.throws(() => asm.add(chunk(0, 0, 'abc', { info: xinfo('v', 3, 'none'), last: true, digest: sha('abc') })), StreamError);
});

test('accepts a stream without digests when it asked for none', () => {
  const asm = new Assembler(1);
  asm.add(chunk(0, 0, 'abc', { info: xinfo('v', 3, 'none'), last: true }));
  const [v] = asm.results();
  assert.equal(v.digest, '-');
  assert.equal(formatLine(v), 'v\t3\tDTYPE_INT8\t3\t-');
});
