/**
 * Checks `switchyard lookup - --json` answers against the reference LPM:
 *   node dist/bench/check-lookups.js BINDINGS.json QUERIES.txt ANSWERS.ndjson
 * Exits non-zero on the first disagreement, naming the query.
 */
import fs from 'node:fs';
import { parseBindingsDocument } from '../src/bindings/binding.js';
import { ReferenceLpm } from '../src/bindings/reference.js';
import { parseAddress } from '../src/net/address.js';

const [bindingsFile, queriesFile, answersFile] = process.argv.slice(2);
if (!bindingsFile || !queriesFile || !answersFile) {
  console.error('usage: check-lookups BINDINGS.json QUERIES.txt ANSWERS.ndjson');
  process.exit(2);
}
const table = parseBindingsDocument(JSON.parse(fs.readFileSync(bindingsFile, 'utf8')), bindingsFile);
const reference = new ReferenceLpm(table);
const queries = fs.readFileSync(queriesFile, 'utf8').trim().split('\n');
const answers = fs.readFileSync(answersFile, 'utf8').trim().split('\n');
if (queries.length !== answers.length) {
  console.error(`${queries.length} queries but ${answers.length} answers`);
  process.exit(1);
}
let hits = 0;
for (let k = 0; k < queries.length; k++) {
  const [protocol, ip, port] = queries[k]!.split(' ') as ['tcp' | 'udp', string, string];
  const want = reference.lookup(protocol, parseAddress(ip)!, Number(port));
  const got = JSON.parse(answers[k]!) as { label: string | null; binding: { prefix: string; port: number } | null };
  const expected = want ? table.binding(want.index) : undefined;
  const ok = expected
    ? got.label === expected.label && got.binding?.prefix === expected.prefix && got.binding?.port === expected.port
    : got.label === null;
  if (!ok) {
    console.error(`disagreement on "${queries[k]}": program ${JSON.stringify(got.binding)}, reference ${JSON.stringify(expected ?? null)}`);
    process.exit(1);
  }
  if (expected) hits++;
}
console.log(`${queries.length} queries agree with the reference LPM (${hits} matched a binding, ${queries.length - hits} matched none)`);
