// Opens COUNT TCP connections to ADDR:PORT one after another (each reads the
// service's reply to the end) and prints the elapsed milliseconds as JSON.
import net from 'node:net';

const [addr, port, count] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const once = () =>
  new Promise((resolve, reject) => {
    const s = net.connect({ host: addr, port });
    s.on('data', () => {});
    s.on('end', () => {
      s.destroy();
      resolve();
    });
    s.on('error', reject);
  });
const started = process.hrtime.bigint();
for (let i = 0; i < count; i++) await once();
console.log(JSON.stringify({ ms: Number(process.hrtime.bigint() - started) / 1e6, count }));
