// One unmodified Node cluster HTTP app for bench/node_cluster.sh: the same file runs under
// Node's own primary (`node cluster_http.js`, which forks) and as the workers of another primary
// that speaks Node's cluster channel (`forkline run --ipc node -- node cluster_http.js`: there
// every process is a worker, and each `server.listen()` asks forkline for the socket).
//
// Each worker answers every request with `Hello, World!` (keep-alive unless the client asks
// for `Connection: close`) and an `X-Worker` header naming its `cluster.worker.id`, and counts
// the requests and the connections it served. On SIGUSR2 it prints both, `served worker=ID
// pid=PID requests=N connections=M`, so a benchmark can read each worker's share of a
// measurement (the difference between two such lines). Once listening it prints `listening
// worker=ID pid=PID`.
//
// Usage: node bench/node/cluster_http.js [ADDR] [WORKERS]
//   defaults: 127.0.0.1:8989, os.availableParallelism() (WORKERS is only read by Node's primary)
// The scheduling policy of Node's primary comes from NODE_CLUSTER_SCHED_POLICY=rr|none.
'use strict';

const cluster = require('node:cluster');
const http = require('node:http');
const os = require('node:os');

const [addrArg = '127.0.0.1:8989', workersArg] = process.argv.slice(2);
const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
const workers = workersArg === undefined ? cores : Number(workersArg);
const sep = addrArg.lastIndexOf(':');
const host = addrArg.slice(0, sep).replace(/^\[|\]$/g, '');
const port = Number(addrArg.slice(sep + 1));

if (cluster.isPrimary) {
  cluster.on('exit', (worker, code, signal) => {
    console.log(`[Primary] worker ${worker.process.pid} died with code: ${code}, and ${signal}`);
  });
  for (let i = 0; i < workers; i++) {
    cluster.fork();
  }
} else {
  const id = cluster.worker.id;
  const body = 'Hello, World!';
  const headers = {
    'Content-Type': 'text/plain',
    'Content-Length': Buffer.byteLength(body),
    'X-Worker': String(id),
  };
  let served = 0;
  let connections = 0;
  const server = http.createServer((req, res) => {
    served++;
    res.writeHead(200, headers);
    res.end(body);
  });
  server.on('connection', () => {
    connections++;
  });
  process.on('SIGUSR2', () => {
    console.log(`served worker=${id} pid=${process.pid} requests=${served} connections=${connections}`);
  });
  server.listen(port, host, () => {
    console.log(`listening worker=${id} pid=${process.pid}`);
  });
}
