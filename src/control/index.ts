/**
 * Control of a store: the operations every CLI command asks for, done on a
 * store this process owns (LocalControl) or sent to the daemon that owns it
 * over its control socket (RemoteControl; serveControl is the daemon's end),
 * and the host API other hosts use (serveApi: HTTP/JSON with a token).
 */
export { LocalControl, CONTROL_OPS, CONTROL_SOCKET_NAME, type StoreControl, type ControlOp, type VmStatusReport } from './operations.js';
export { serveControl, type ControlServer } from './server.js';
export { RemoteControl, daemonAnswers } from './client.js';
export { serveApi, type ApiServer, type ApiOptions } from './api-server.js';
