// End-to-end tests against a real server: the one at $WEIGHTGEN_SERVER (HOST:PORT), or one started
// here from the repository's virtual environment (../../.venv). Skipped when neither is available.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { parseRequest } from '../lib/client.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = join(HERE, '..', '..', '..');
const CLI = join(HERE, '..', 'bin', 'weightgen-node.js');
const REQUEST = join(REPO, 'examples', 'interop', 'request.json');
const BAD_REQUEST = join(REPO, 'examples', 'interop', 'bad_request.json');
const VENV_PYTHON = join(REPO, '.venv', 'bin', 'python');
const ITEMSIZE = {
  DTYPE_FLOAT32: 4, DTYPE_FLOAT64: 8, DTYPE_FLOAT16: 2, DTYPE_BFLOAT16: 2, DTYPE_COMPLEX64: 8, DTYPE_COMPLEX128: 16,
  DTYPE_INT8: 1, DTYPE_INT16: 2, DTYPE_INT32: 4, DTYPE_INT64: 8, DTYPE_UINT8: 1, DTYPE_UINT16: 2, DTYPE_UINT32: 4,
  DTYPE_UINT64: 8, DTYPE_BOOL: 1,
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function startServer() {
  const dir = mkdtempSync(join(tmpdir(), 'weightgen-node-'));
  const portFile = join(dir, 'ports.json');
  const proc = spawn(
    VENV_PYTHON,
    ['-m', 'weightgen.server', '--host', '127.0.0.1', '--port', '0', '--metrics-port', '0', '--port-file', portFile, '--devices', '1'],
    { stdio: 'ignore' },
  );
  const deadline = Date.now() + 180_000;
  while (!existsSync(portFile) || readFileSync(portFile, 'utf8') === '') {
    if (proc.exitCode !== null) throw new Error(`server exited with ${proc.exitCode}`);
    if (Date.now() > deadline) throw new Error('server did not bind in time');
    await sleep(100);
  }
  const { port } = JSON.parse(readFileSync(portFile, 'utf8'));
  return { address: `127.0.0.1:${port}`, stop: () => { proc.kill('SIGTERM'); rmSync(dir, { recursive: true, force: true }); } };
}

function run(...args) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 180_000 });
}

const available = Boolean(process.env.WEIGHTGEN_SERVER) || existsSync(VENV_PYTHON);

describe('against a server', { skip: available ? false : 'set WEIGHTGEN_SERVER or create ../../.venv' }, () => {
  let server;
  before(async () => {
    server = process.env.WEIGHTGEN_SERVER ? { address: process.env.WEIGHTGEN_SERVER, stop() {} } : await startServer();
  });
  after(() => server?.stop());

  test('materialises the interop request: one verified line per variable, in request order', { timeout: 240_000 }, () => {
    // The server may still be warming up (UNAVAILABLE) when started here: retry for a while.
    let out = run('--server', server.address, REQUEST);
    for (let tries = 0; out.status !== 0 && /UNAVAILABLE/.test(out.stderr) && tries < 180; tries++) {
      spawnSync('sleep', ['1']);
      out = run('--server', server.address, REQUEST);
    }
    assert.equal(out.status, 0, out.stderr);
    const request = parseRequest(readFileSync(REQUEST, 'utf8'));
    const lines = out.stdout.trimEnd().split('\n').map((l) => l.split('\t'));
    assert.deepEqual(lines.map((l) => l[0]), request.variables.map((v) => v.name));
    lines.forEach(([name, shape, dtype, byteSize, digest], i) => {
      const spec = request.variables[i];
      assert.equal(shape, spec.shape.join(','), name);
      assert.equal(dtype, spec.dtype, name);
      const dims = spec.slice?.length ? spec.slice.map((r) => Number(r.stop) - Number(r.start)) : spec.shape.map(Number);
      assert.equal(Number(byteSize), dims.reduce((a, b) => a * b, 1) * ITEMSIZE[dtype], name);
      assert.match(digest, /^[0-9a-f]{64}$/, name);
    });
    const empty = lines.find((l) => l[3] === '0');
    assert.ok(empty, 'the request has a zero-size variable');
    assert.equal(empty[4], 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });

  test('--digest xxh3_128 and none: the same variables, verified with XXH3-128 or not at all', { timeout: 120_000 }, () => {
    const sha = run('--server', server.address, REQUEST).stdout.trimEnd().split('\n').map((l) => l.split('\t'));
    for (const digest of ['xxh3_128', 'none']) {
      const out = run('--server', server.address, '--digest', digest, REQUEST);
      assert.equal(out.status, 0, out.stderr);
      const lines = out.stdout.trimEnd().split('\n').map((l) => l.split('\t'));
      assert.deepEqual(lines.map((l) => l.slice(0, 4)), sha.map((l) => l.slice(0, 4)));
      for (const l of lines) assert.match(l[4], digest === 'none' ? /^-$/ : /^[0-9a-f]{32}$/, l[0]);
      if (digest === 'xxh3_128') assert.equal(lines.find((l) => l[3] === '0')[4], '99aa06d3014798d86001c324468d497f');
    }
  });

  test('prints the status code and message of a server error and exits non-zero', { timeout: 60_000 }, () => {
    const out = run('--server', server.address, BAD_REQUEST);
    assert.equal(out.status, 1);
    assert.equal(out.stdout, '');
    assert.match(out.stderr, /^error: INVALID_ARGUMENT .*bad\/uniform/);
  });
});

test('rejects a request file with an unknown field', () => {
  assert.throws(() => parseRequest('{"seed": "1", "variables": [{"name": "w", "shap": ["2"]}]}'), /shap: no such field/);
});

test('rejects a request file with an unknown enum name', () => {
  assert.throws(() => parseRequest('{"variables": [{"name": "w", "dtype": "DTYPE_FLOAT33"}]}'), /DTYPE_FLOAT33/);
});

test('accepts proto field names as well as JSON names', () => {
  const r = parseRequest('{"chunk_bytes": 1024, "variables": [{"name": "w", "initializer": {"he_normal": {}}}]}');
  assert.equal(r.chunkBytes, 1024);
  assert.deepEqual(r.variables[0].initializer, { heNormal: {} });
});

test('exits 2 with usage on bad arguments', () => {
  const out = run();
  assert.equal(out.status, 2);
  assert.match(out.stderr, /usage:/);
});
