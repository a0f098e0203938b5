// The README is part of the contract: every error code and every env override must be documented.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ENV_OVERRIDES } from '../../src/config/index.js';
import { ERROR_CODES } from '../../src/errors.js';

const readme = readFileSync(join(import.meta.dirname, '..', '..', 'README.md'), 'utf8');

describe('README', () => {
  it.each(Object.keys(ERROR_CODES))('lists error code %s in the error table', (code) => {
    expect(readme).toMatch(new RegExp(`^\\| \`${code}\` \\|`, 'm'));
  });
  it.each(ENV_OVERRIDES.map((o) => o.env))('documents env override %s', (env) => {
    expect(readme).toContain(`\`${env}\``);
  });
  it('gives the set-up and test commands', () => {
    expect(readme).toContain('npm install && npm start');
    expect(readme).toContain('npm test');
  });
});
