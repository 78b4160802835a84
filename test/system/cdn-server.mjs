// The example cdn.service's server (systemd/examples/cdn.service runs
// /usr/local/bin/cdn-server): accepts on the sockets systemd passes
// (LISTEN_FDS, from fd 3) and answers "cdn" on each TCP connection and to
// each UDP datagram, so a probe can tell where the dispatcher sent it.
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';

const count = Number(process.env.LISTEN_FDS ?? 0);
if (Number(process.env.LISTEN_PID) !== process.pid || count < 1) {
  console.error('cdn-server: no sockets from systemd (LISTEN_FDS)');
  process.exit(1);
}
const inode = (fd) => /socket:\[(\d+)\]/.exec(fs.readlinkSync(`/proc/self/fd/${fd}`))?.[1];
const udpInodes = new Set(
  ['/proc/net/udp', '/proc/net/udp6'].flatMap((f) => fs.readFileSync(f, 'utf8').split('\n').slice(1).map((l) => l.trim().split(/\s+/)[9])),
);
for (let fd = 3; fd < 3 + count; fd++) {
  if (udpInodes.has(inode(fd))) {
    const s = dgram.createSocket('udp4');
    s.on('message', (_msg, from) => s.send('cdn', from.port, from.address));
    s.bind({ fd });
  } else {
    net.createServer((c) => c.end('cdn')).listen({ fd });
  }
}
console.log(`cdn-server: serving ${count} socket(s)`);
