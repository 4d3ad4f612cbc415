import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    // Fault tests start, kill and restart real servers: generous, but bounded.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Separate processes, so a test that kills its own child processes cannot take a sibling
    // test file's servers with it.
    pool: 'forks',
  },
});
