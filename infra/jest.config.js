/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.tsx?$': ['ts-jest', { isolatedModules: true }] },
  setupFiles: ['<rootDir>/test/setup.ts'],
  // Synthesizing the stack takes a few seconds on 2 cores.
  testTimeout: 120000,
};
