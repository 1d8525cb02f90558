/**
 * The VM's host port, forwarded by the daemon itself: QEMU's user network
 * forwards an internal loopback port to the guest's port 80, and this proxy
 * owns the port users connect to. So the daemon sees every incoming
 * connection before the guest does: it tells the pager (which may prefetch
 * the VM's network working set first), then connects to the internal port
 * and relays bytes both ways.
 *
 * Per connection: accepted (paused) -> pager told -> connected upstream ->
 * relaying -> either side ends or fails -> both closed. A connection the
 * guest refuses is closed at once; nothing the proxy does can throw past a
 * connection. `onAnswered` hears, once per connection, how long after its
 * arrival the guest's first byte came back (undefined: it closed first).
 */
import net from 'node:net';

/** A listening proxy for one VM. */
export class PortProxy {
  private readonly sockets = new Set<net.Socket>();

  private constructor(private readonly server: net.Server, readonly port: number) {}

  /**
   * Listens on `host`:`port` (0: any free port) and relays each connection
   * to 127.0.0.1:`targetPort` once `onConnection` has settled.
   */
  static listen(host: string, port: number, targetPort: number, onConnection: () => Promise<void>,
    onAnswered: (ms: number | undefined) => void = () => undefined): Promise<PortProxy> {
    return new Promise((resolve, reject) => {
      let proxy: PortProxy | undefined;
      const server = net.createServer({ pauseOnConnect: true }, (client) => {
        proxy?.relay(client, targetPort, onConnection, onAnswered);
      });
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        server.on('error', () => undefined);
        proxy = new PortProxy(server, (server.address() as net.AddressInfo).port);
        resolve(proxy);
      });
    });
  }

  private relay(client: net.Socket, targetPort: number, onConnection: () => Promise<void>,
    onAnswered: (ms: number | undefined) => void): void {
    const arrived = performance.now();
    let reported = false;
    const report = (ms: number | undefined) => {
      if (reported) return;
      reported = true;
      try { onAnswered(ms); } catch { /* a listener's failure is not the connection's */ }
    };
    this.sockets.add(client);
    client.once('close', () => report(undefined));
    client.on('error', () => undefined);
    client.once('close', () => this.sockets.delete(client));
    void onConnection().catch(() => undefined).then(() => {
      if (client.destroyed) return;
      const guest = net.connect(targetPort, '127.0.0.1');
      this.sockets.add(guest);
      guest.on('error', () => client.destroy());
      client.on('error', () => guest.destroy());
      guest.once('close', () => { this.sockets.delete(guest); client.destroy(); });
      client.once('close', () => guest.destroy());
      guest.once('data', () => report(performance.now() - arrived));
      guest.once('connect', () => {
        client.pipe(guest);
        guest.pipe(client);
        client.resume();
      });
    });
  }

  /** Stops listening and cuts every relayed connection. */
  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
