// Traffic inside the container's namespace, to addresses no socket is bound
// to (the dispatcher decides who gets them):
//   probe.mjs once tcp|udp ADDR PORT     prints who answered, or the error
//   probe.mjs loop PREFIX24 STOPFILE     TCP connects and UDP datagrams to
//     addresses of PREFIX24 (e.g. 198.51.100) until STOPFILE exists, then
//     prints {attempts, ok, refused, timeout, misrouted, errors}
// UDP goes out from 127.0.0.1, so the answer comes back to an address no
// binding covers (an answer to a bound address would be dispatched too).
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';

const TIMEOUT_MS = 1000;

function tcp(addr, port) {
  return new Promise((resolve) => {
    let data = '';
    const s = net.connect({ host: addr, port });
    const timer = setTimeout(() => (s.destroy(), resolve('timeout')), TIMEOUT_MS);
    s.on('data', (d) => (data += d));
    s.on('end', () => (clearTimeout(timer), resolve(data || 'empty')));
    s.on('error', (e) => (clearTimeout(timer), resolve(e.code === 'ECONNREFUSED' ? 'refused' : e.code ?? 'error')));
  });
}

function udp(addr, port) {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    const done = (r) => (clearTimeout(timer), s.close(), resolve(r));
    const timer = setTimeout(() => done('timeout'), TIMEOUT_MS);
    s.on('message', (m) => done(m.toString()));
    s.on('error', (e) => done(e.code === 'ECONNREFUSED' ? 'refused' : e.code ?? 'error'));
    s.bind({ address: '127.0.0.1', port: 0 }, () => s.send('probe', port, addr));
  });
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'once') {
  const [proto, addr, port] = args;
  console.log(await (proto === 'udp' ? udp : tcp)(addr, Number(port)));
} else if (mode === 'loop') {
  const [prefix, stopFile, expected = 'cdn'] = args;
  const counts = { attempts: 0, ok: 0, refused: 0, timeout: 0, misrouted: 0, errors: 0, tcp: 0, udp: 0 };
  for (let i = 0; !fs.existsSync(stopFile); i++) {
    const addr = `${prefix}.${1 + (i % 254)}`;
    const proto = i % 2 ? 'udp' : 'tcp';
    const r = await (proto === 'udp' ? udp : tcp)(addr, 1000 + (i % 5000));
    counts.attempts++;
    counts[proto]++;
    if (r === expected) counts.ok++;
    else if (r === 'refused') counts.refused++;
    else if (r === 'timeout') counts.timeout++;
    else if (r === 'cdn' || r === 'empty' || /^[a-z]/.test(r)) counts.misrouted++;
    else counts.errors++;
    await new Promise((res) => setTimeout(res, 5));
  }
  console.log(JSON.stringify(counts));
} else {
  console.error('usage: probe.mjs once tcp|udp ADDR PORT | probe.mjs loop PREFIX24 STOPFILE [EXPECTED]');
  process.exit(2);
}
