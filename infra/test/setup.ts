// Nothing compiles in tests: function code and the worker image context are
// placeholder directories under the OS temp dir (see helpers.ts), and bundling is
// skipped for every stack.
process.env.CDK_DISABLE_VERSION_CHECK = '1';
