// Node.js cluster HTTP hello world for forkline's keep-alive HTTP comparison (driven by wrk).
// The primary forks one worker per core; each worker runs `http.createServer` (keep-alive is
// Node's default) and answers every request with `Hello, World!`, DELAY_MS after it arrives.
//
// Usage: node bench/node/http.js [ADDR] [DELAY_MS] [WORKERS]
//   defaults: 127.0.0.1:8989, 10, os.availableParallelism()
// The scheduling policy comes from NODE_CLUSTER_SCHED_POLICY=rr|none (Node's default: rr).
'use strict';

const cluster = require('node:cluster');
const http = require('node:http');
const os = require('node:os');

const [addrArg = '127.0.0.1:8989', delayArg = '10', workersArg] = process.argv.slice(2);
const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
const delay = Number(delayArg);
const workers = workersArg === undefined ? cores : Number(workersArg);
const sep = addrArg.lastIndexOf(':');
const host = addrArg.slice(0, sep).replace(/^\[|\]$/g, '');
const port = Number(addrArg.slice(sep + 1));

if (cluster.isPrimary) {
  cluster.on('online', (worker) => {
    console.log(`Create worker-${worker.process.pid}`);
  });
  cluster.on('exit', (worker, code, signal) => {
    console.log(`[Primary] worker ${worker.process.pid} died with code: ${code}, and ${signal}`);
    cluster.fork();
  });
  for (let i = 0; i < workers; i++) {
    cluster.fork();
  }
} else {
  const body = 'Hello, World!';
  const respond = (res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  };
  const server = http.createServer((req, res) => {
    if (delay > 0) {
      setTimeout(() => respond(res), delay);
    } else {
      respond(res);
    }
  });
  server.listen(port, host);
}
