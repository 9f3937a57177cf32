'use strict';
// Anchor relay for bench/run.py: what the gateway's relaying would cost in Node, with no auth and no MongoDB.
//
//   node relay.js PORT UPSTREAM_URL        e.g. node relay.js 8101 http://127.0.0.1:8100
//
// HTTP: every request is proxied to UPSTREAM_URL by http-proxy over keep-alive upstream connections.
// WebSocket: a `ws` server takes the client's socket; a `ws` client opens one upstream socket per client socket, to the
// same path and query. Frames are forwarded message by message in both directions (each is parsed, unmasked, text
// UTF-8-validated, then re-framed, as a tornado relay does), binary stays binary and text stays text. Client frames
// that arrive before the upstream socket is open wait in order. A close on one leg closes the other with its code.
// Prints "listening PORT" once it accepts connections.
const http = require('http');
const httpProxy = require('http-proxy');
const { WebSocket, WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const upstream = process.argv[3];
if (!port || !upstream) {
  console.error('usage: node relay.js PORT UPSTREAM_URL');
  process.exit(2);
}
const upstreamWs = upstream.replace(/^http/, 'ws');
const MAX_PAYLOAD = 16 << 20;

const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
const proxy = httpProxy.createProxyServer({ target: upstream, agent });
proxy.on('error', (err, req, res) => {
  if (res && typeof res.writeHead === 'function' && !res.headersSent) {
    res.writeHead(502, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ message: `upstream: ${err.code || err.message}` }));
  } else if (res && typeof res.destroy === 'function') {
    res.destroy();
  }
});

// RFC 6455 §7.4.1: codes a peer may report but nobody may send.
function wireCode(code) {
  if (code === undefined || code === 1005) return 1000;
  if (code === 1006 || code === 1015) return 1011;
  if ((code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999)) return code;
  return 1011;
}

function closeLeg(ws, code, reason) {
  if (ws.readyState === WebSocket.CONNECTING) {
    ws.terminate();
  } else if (ws.readyState === WebSocket.OPEN) {
    ws.close(wireCode(code), reason && reason.length <= 123 ? reason : undefined);
  }
}

function relay(client, req) {
  const up = new WebSocket(upstreamWs + req.url, { perMessageDeflate: false, maxPayload: MAX_PAYLOAD });
  let pending = [];
  client.on('message', (data, isBinary) => {
    if (pending === null) up.send(data, { binary: isBinary });
    else pending.push([data, isBinary]);
  });
  up.on('open', () => {
    for (const [data, isBinary] of pending) up.send(data, { binary: isBinary });
    pending = null;
  });
  up.on('message', (data, isBinary) => {
    if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
  });
  up.on('close', (code, reason) => closeLeg(client, code, reason));
  client.on('close', (code, reason) => closeLeg(up, code, reason));
  up.on('error', () => closeLeg(client, 1011, 'upstream connection failed'));
  client.on('error', () => closeLeg(up, 1011));
}

const server = http.createServer((req, res) => proxy.web(req, res));
server.keepAliveTimeout = 60000;
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: MAX_PAYLOAD });
server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => socket.destroy());
  wss.handleUpgrade(req, socket, head, (client) => relay(client, req));
});
server.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));

// The bench asks for a full collection before each memory reading (node --expose-gc), so the reading shows what
// the sockets hold rather than when V8 last collected.
if (typeof global.gc === 'function') process.on('SIGUSR2', () => global.gc());

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
