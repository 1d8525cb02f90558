/**
 * Public surface of the host agent: the control operations (local or via
 * the daemon's control socket). Volume transfer, placement and cluster state
 * join here with the migration issue.
 */
export { LocalControl, CONTROL_OPS, CONTROL_SOCKET_NAME, type StoreControl, type ControlOp } from './control.js';
export { serveControl, type ControlServer } from './control-server.js';
export { RemoteControl, daemonAnswers } from './control-client.js';
