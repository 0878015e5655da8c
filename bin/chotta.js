#!/usr/bin/env node
// The runtime and the model files are TypeScript: tsx compiles them on import, with source maps,
// so every IR node can name the model line that made it.
import { register } from 'tsx/esm/api';

register();
const { main, runCli } = await import('../runtime/cli.ts');
await runCli('chotta', main);
// A live Dawn instance can keep Node's event loop alive after the work is done.
process.exit();
