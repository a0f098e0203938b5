import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node',
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Integration and interop tests start real servers on port 0; two workers fit the 2-core machine.
    pool: 'forks',
    maxWorkers: 2,
  },
});
