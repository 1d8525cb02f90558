/**
 * Public surface of the NBD server: start a server over a backend, the
 * backend interfaces, the store-backed backend and the wire constants.
 */
export {
  NbdServer, isLoopback, DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, defaultMaxConnections,
  type NbdServerOptions, type NbdAddresses, type ExportStats,
} from './server.js';
export { TlsCredentials, parsePskFile, type NbdTlsOptions } from './tls.js';
export { type NbdBackend, type ExportInfo, type NbdLogger, consoleLogger, silentLogger } from './backend.js';
export { StoreBackend, describeVolume, type ExportableStore } from './store-backend.js';
export { type TlsMode } from './handshake.js';
export { DEFAULT_LIMITS, type TransmissionLimits } from './transmission.js';
export * as protocol from './protocol.js';
