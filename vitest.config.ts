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
    // Two files at a time, even on two cores (Vitest's default there is one): most of a test's
    // time is spent waiting on its servers and child processes, not on the CPU. The whole suite
    // took 374 s one file at a time and 220–227 s two at a time, green each time (2026-12-02).
    maxWorkers: 2,
  },
});
