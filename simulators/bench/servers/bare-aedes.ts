// The MQTT baseline of `wanwu-sim bench`: aedes taking QoS 1 publishes and doing nothing else.
// No authentication, no authorization hooks, aedes' default in-memory persistence and emitter, no
// subscribers: a QoS 1 PUBLISH is parsed, PUBACKed [MQTT-4.3.2-2] and routed to nobody.
//
//   node dist/simulators/bench/servers/bare-aedes.js     prints {"ready":true,"port":N}, SIGTERM stops it
//
// The one non-default option is maxClientsIdLength: the bench drives every MQTT server with the
// same CONNECT packets, and Wanwu's Alibaba-style client ids ({id}|securemode=3,...|) exceed the
// 23 characters aedes allows by default (MQTT 3.1.1 §3.1.3.1 lets a server accept longer ones).
// It changes what is accepted at CONNECT, not the cost of a PUBLISH.

import { createServer, type AddressInfo, type Socket } from 'node:net';
import { Aedes } from 'aedes';

const broker = await Aedes.createBroker({ maxClientsIdLength: 256 });
// A client that goes away mid-run must not take the baseline down.
broker.on('clientError', () => {});
broker.on('connectionError', () => {});
const sockets = new Set<Socket>();
const server = createServer(broker.handle as (socket: Socket) => void);
server.on('connection', (s: Socket) => {
  sockets.add(s);
  s.on('close', () => sockets.delete(s));
});
await new Promise<void>((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', () => resolve());
});
process.stdout.write(`${JSON.stringify({ ready: true, port: (server.address() as AddressInfo).port })}\n`);

let stopping = false;
process.once('SIGTERM', () => {
  if (stopping) return;
  stopping = true;
  // server.close() waits for open connections; the load generator has normally disconnected already,
  // any straggler is cut so the process exits promptly.
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  for (const s of sockets) s.destroy();
  broker.close(() => {
    void closed.then(() => process.exit(0));
  });
});
