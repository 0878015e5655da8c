#!/usr/bin/env node
// Model files are TypeScript: tsx compiles them on import, with source maps, so every IR node can
// name the model line that made it.
import { register } from 'tsx/esm/api';

register();
const { main, runCli } = await import('../compiler/tools/cli.ts');
await runCli('chotta-compile', main);
