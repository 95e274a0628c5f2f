// A plain Node HTTP hello-world on 127.0.0.1:$PORT, knowing nothing of forkline: the worker
// program for the proxy-mode benchmark (bench/proxy_http.sh).
'use strict';
const http = require('http');
const port = Number(process.env.PORT);
if (!port) {
  console.error('PORT is not set');
  process.exit(2);
}
http
  .createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end(`hello from ${process.pid}\n`);
  })
  .listen(port, '127.0.0.1');
