#!/usr/bin/env node
// Materialises a batch from a weightgen server and prints one line per variable, in request order:
//   name<TAB>shape<TAB>dtype<TAB>byte_size<TAB>digest (hex, of --digest: sha256 by default; '-' for none)
// On a gRPC error: "error: CODE message" on stderr, exit 1. On a bad stream or request file: exit 2.
import { parseArgs } from 'node:util';

import { codeName, connect, formatLine, materialize, readRequest } from '../lib/client.js';

const USAGE = 'usage: weightgen-node [--server HOST:PORT] [--timeout SECONDS] [--digest sha256|xxh3_128|none] REQUEST.json';

async function main() {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        server: { type: 'string', default: '127.0.0.1:50051' },
        timeout: { type: 'string', default: '120' },
        digest: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: true,
    });
  } catch (err) {
    console.error(`${err.message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const timeoutSeconds = Number(values.timeout);
  const digests = ['sha256', 'xxh3_128', 'none'];
  if (positionals.length !== 1 || !(timeoutSeconds > 0) || (values.digest !== undefined && !digests.includes(values.digest))) {
    console.error(USAGE);
    return 2;
  }
  let request;
  try {
    request = readRequest(positionals[0]);
  } catch (err) {
    console.error(`error: ${err.message}`);
    return 2;
  }
  const client = connect(values.server);
  try {
    const results = await materialize(client, request, { timeoutSeconds, digest: values.digest });
    process.stdout.write(results.map((r) => `${formatLine(r)}\n`).join(''));
    return 0;
  } catch (err) {
    if (typeof err.code === 'number') {
      console.error(`error: ${codeName(err.code)} ${err.details}`);
      return 1;
    }
    console.error(`error: ${err.message}`);
    return 2;
  } finally {
    client.close();
  }
}

process.exitCode = await main();
