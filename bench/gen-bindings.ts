/**
 * Writes a random binding set (clustered IPv4 and IPv6 prefixes, mixed ports)
 * and matching queries, for manual checks and benchmarks:
 *   node dist/bench/gen-bindings.js COUNT OUT.json [QUERIES OUT.txt]
 */
import fs from 'node:fs';
import { randomBindings, randomQueries } from '../test/support/random.js';
import { formatAddress } from '../src/net/address.js';

const [countText, out, queryCountText, queriesOut] = process.argv.slice(2);
if (!countText || !out) {
  console.error('usage: gen-bindings COUNT OUT.json [QUERIES OUT.txt]');
  process.exit(2);
}
const set = randomBindings(Number(process.env.SEED ?? 1), Number(countText));
const fd = fs.openSync(out, 'w');
fs.writeSync(fd, '{"bindings":[\n');
let first = true;
for (const b of set.table) {
  fs.writeSync(fd, `${first ? '' : ',\n'}${JSON.stringify(b)}`);
  first = false;
}
fs.writeSync(fd, '\n]}\n');
fs.closeSync(fd);
if (queryCountText && queriesOut) {
  const lines = randomQueries(Number(process.env.SEED ?? 1) + 1, set, Number(queryCountText)).map(
    (q) => `${q.protocol} ${formatAddress(q.address.family, q.address.words)} ${q.port}`,
  );
  fs.writeFileSync(queriesOut, `${lines.join('\n')}\n`);
}
console.log(`${set.table.count} bindings → ${out}`);
