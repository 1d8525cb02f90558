/** Public surface of the CLI: the program and its entry point. */
export { buildProgram, main } from './main.js';
export { parseSize, formatBytes } from './format.js';
