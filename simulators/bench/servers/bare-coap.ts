// The CoAP baseline of `wanwu-sim bench`: a node-coap server answering every request 2.04 Changed
// with an empty payload (RFC 7252 §5.9.1.4) and doing nothing else.
//
//   node dist/simulators/bench/servers/bare-coap.js     prints {"ready":true,"port":N}, SIGTERM stops it
//
// Everything is node-coap's default, including its own message handling: the response to a CON
// request is piggybacked in the ACK when the handler answers within piggybackReplyMs (50 ms), else
// node-coap sends an empty ACK and the response follows as a separate CON (RFC 7252 §5.2.2); it also
// keeps its responses in an LRU cache to answer duplicates (RFC 7252 §4.5).

import type { AddressInfo } from 'node:net';
import type { Socket } from 'node:dgram';
import coap from 'coap';

const server = coap.createServer((_req, res) => {
  res.code = '2.04';
  res.end();
});
await new Promise<void>((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', (err?: Error) => (err ? reject(err) : resolve()));
});
// node-coap does not expose the bound port; its dgram socket does.
const port = ((server._sock as Socket).address() as AddressInfo).port;
process.stdout.write(`${JSON.stringify({ ready: true, port })}\n`);

let stopping = false;
process.once('SIGTERM', () => {
  if (stopping) return;
  stopping = true;
  server.close(() => process.exit(0));
});
