#!/usr/bin/env node
// The `wanwu` command. The TypeScript sources are compiled to dist/ by `npm install` (the prepare script).
import { main } from '../dist/src/cli.js';

main(process.argv).then(
  (code) => { if (typeof code === 'number') process.exitCode = code; },
  (err) => {
    process.stderr.write(`wanwu: ${err && err.message ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
