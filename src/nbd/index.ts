/**
 * Public surface of the NBD server: start a server over a backend, the
 * backend interfaces, the store-backed backend and the wire constants.
 */
export { NbdServer, type NbdServerOptions, type NbdTlsOptions, type NbdAddresses } from './server.js';
export { type NbdBackend, type ExportInfo, type NbdLogger, consoleLogger, silentLogger } from './backend.js';
export { StoreBackend, describeVolume, type ExportableStore } from './store-backend.js';
export { type TlsMode } from './handshake.js';
export { DEFAULT_LIMITS, type TransmissionLimits } from './transmission.js';
export * as protocol from './protocol.js';
