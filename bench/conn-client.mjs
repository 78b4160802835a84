// Alternates batches of sequential TCP connections between two targets (each
// connection reads the service's reply to the end) and prints, per target,
// the connections per second of every batch as JSON. Alternating in one
// process keeps both sides under the same conditions.
//   node conn-client.mjs ADDR_A ADDR_B PORT BATCH ROUNDS
import net from 'node:net';

const [a, b, port, batch, rounds] = [process.argv[2], process.argv[3], Number(process.argv[4]), Number(process.argv[5]), Number(process.argv[6])];
const once = (host) =>
  new Promise((resolve, reject) => {
    const s = net.connect({ host, port });
    s.on('data', () => {});
    s.on('end', () => {
      s.destroy();
      resolve();
    });
    s.on('error', reject);
  });
const rate = async (host) => {
  const started = process.hrtime.bigint();
  for (let i = 0; i < batch; i++) await once(host);
  return (batch * 1e9) / Number(process.hrtime.bigint() - started);
};
const out = { [a]: [], [b]: [] };
for (let r = 0; r < rounds; r++) {
  // Swap the order every round so neither side always goes first.
  for (const host of r % 2 === 0 ? [a, b] : [b, a]) out[host].push(await rate(host));
}
console.log(JSON.stringify(out));
