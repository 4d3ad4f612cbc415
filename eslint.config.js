// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'coverage/'] },
  js.configs.recommended,
  ...tseslint.configs.strictTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // Template literals with numbers are how log lines and SQL identifiers are built here.
      '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true }],
      // Every promise must be awaited or explicitly handed to a handler: a dropped flush
      // promise is a silent loss of an error.
      '@typescript-eslint/no-floating-promises': 'error',
    },
  },
  {
    // The API tests read JSON answers whose shape is what the assertions check.
    files: ['test/api.test.ts', 'test/security.test.ts', 'test/startup-and-errors.test.ts'],
    rules: {
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
    },
  },
  {
    files: ['bin/**/*.js', 'eslint.config.js'],
    ...tseslint.configs.disableTypeChecked,
  },
);
