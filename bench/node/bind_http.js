// A plain Node HTTP hello-world that knows nothing of forkline, for bench/self_bind.sh: with a
// port argument it binds 127.0.0.1:PORT itself (forkline's bind trap gives it forkline's
// socket); with `fd` it listens on the socket forkline passed as fd 3.
'use strict';
const http = require('http');
const arg = process.argv[2];
const target = arg === 'fd' ? { fd: 3 } : { port: Number(arg), host: '127.0.0.1' };
http
  .createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end(`hello from ${process.pid}\n`);
  })
  .listen(target);
