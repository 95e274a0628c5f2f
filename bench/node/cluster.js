// The Node.js seed program for forkline's benchmarks: Node's own `cluster` module serving the
// seed workload. The primary forks one worker per core; each worker answers every connection,
// DELAY_MS after it arrives, with `Request handled by worker-PID\n` and closes it.
//
// Usage: node bench/node/cluster.js [ADDR] [DELAY_MS] [WORKERS]
//   defaults: 127.0.0.1:8989, 10, os.availableParallelism()
// The scheduling policy comes from NODE_CLUSTER_SCHED_POLICY=rr|none (Node's default: rr).
'use strict';

const cluster = require('node:cluster');
const net = require('node:net');
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
  const message = `Request handled by worker-${process.pid}\n`;
  const server = net.createServer((socket) => {
    // A client that gave up (timeout) resets the connection; without a listener that `error`
    // would kill the worker. This does not change what the handler does on the happy path.
    socket.on('error', () => {});
    if (delay > 0) {
      setTimeout(() => socket.end(message), delay);
    } else {
      socket.end(message);
    }
  });
  server.listen(port, host);
}
