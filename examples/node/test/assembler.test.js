// Unit tests of the reassembly and digest checks: no server needed.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';

import { Assembler, StreamError, formatLine } from '../lib/assembler.js';

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
