#!/usr/bin/env node
// The `wanwu-sim` command (simulators/cli.ts). The TypeScript sources are compiled to dist/ by `npm install`.
import { main } from '../dist/simulators/cli.js';

main(process.argv).then(
  (code) => { if (typeof code === 'number') process.exitCode = code; },
  (err) => {
    process.stderr.write(`wanwu-sim: ${err && err.message ? err.message : String(err)}\n`);
    process.exitCode = 2;
  },
);
