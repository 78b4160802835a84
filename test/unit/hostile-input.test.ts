/**
 * Hostile state files and command lines (issue 7): whatever they hold, a
 * state file is accepted or refused with a SwitchyardError that names the
 * file and the entry (never a TypeError from deep inside), and the CLI
 * answers with exit status 0, 1 (verify's findings, diff's differences: on
 * stdout) or 2 (any error: one line on stderr). Commands and tokens include
 * the names every JavaScript object inherits (issue 15).
 * The CLI runs in this process against a namespace and a bpffs that do not
 * exist, so nothing on this machine can change.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SwitchyardError } from '../../src/errors.js';
import { parseDesiredState } from '../../src/desired/state.js';
import { verifyDocument } from '../../src/verify/verify.js';
import { main } from '../../src/cli/main.js';

const nasty = fc.constantFrom('$(reboot)', '`id`', '../../etc/passwd', 'a;rm -rf /', '\u0000', 'x'.repeat(300), '-h', '--json', '', ' ', '192.0.2.0/24', '::/0', '0.0.0.0/0', '443', '-1', '65536', 'tcp', 'udp', 'cdn');
const value = fc.oneof(nasty, fc.anything({ maxDepth: 2 }));
const binding = fc.dictionary(fc.constantFrom('label', 'protocol', 'prefix', 'port', 'extra'), value, { maxKeys: 5 });
const stateFile = fc.oneof(
  fc.record({ bindings: fc.oneof(fc.array(binding, { maxLength: 5 }), value), services: fc.oneof(fc.dictionary(fc.oneof(nasty, fc.string()), fc.dictionary(fc.constantFrom('tcp', 'udp', 'sctp'), value)), value), https_only: value, exclusive: value }, { requiredKeys: [] }),
  value,
);

describe('hostile input: state files and command lines', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-hostile-input-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('5,000 state files: accepted, or refused with an error naming the file', () => {
    let refused = 0;
    for (const doc of fc.sample(stateFile, { numRuns: 5000, seed: 7 })) {
      for (const check of [() => parseDesiredState(doc, 'f.json'), () => verifyDocument(doc, 'f.json')]) {
        try {
          check();
        } catch (err) {
          if (!(err instanceof SwitchyardError) || !err.message.startsWith('f.json') || !err.code.startsWith('EINVAL')) expect.fail(`${JSON.stringify(doc)?.slice(0, 200)} → ${String(err)}`);
          refused++;
        }
      }
    }
    expect(refused).toBeGreaterThan(5000);
  });

  it('1,000 command lines: exit 0, 1 (verify, diff) or 2, and one line on stderr for 2', async () => {
    const file = (name: string, content: string) => {
      fs.writeFileSync(path.join(dir, name), content);
      return path.join(dir, name);
    };
    const files = [file('good.json', JSON.stringify({ bindings: [{ label: 'cdn', protocol: 'tcp', prefix: '192.0.2.0/24', port: 0 }] })), file('bad.json', '{"bindings": [{"label": "$(reboot)"}]}'), file('junk.json', '\u0000\u0001 not json'), path.join(dir, 'missing.json')];
    // Not register-pid: a number among the tokens may be a real process here.
    const prototypeNames = Object.getOwnPropertyNames(Object.prototype);
    const command = fc.constantFrom('verify', 'diff', 'bind', 'unbind', 'lookup', 'bindings', 'load-bindings', 'status', 'unregister', 'upgrade', 'frobnicate', ...prototypeNames);
    const token = fc.oneof(nasty, fc.constantFrom(...files), fc.constantFrom('--label', '--prefix', '--protocol', '--bogus', '--object', '-x', ...prototypeNames), fc.string({ maxLength: 12 }));
    const argvs = fc.sample(fc.tuple(command, fc.array(token, { maxLength: 6 })), { numRuns: 1000, seed: 11 });
    const out = { stdout: '', stderr: '' };
    const realOut = process.stdout.write.bind(process.stdout);
    const realErr = process.stderr.write.bind(process.stderr);
    const codes: Record<number, number> = {};
    try {
      for (const [name, args] of argvs) {
        out.stdout = '';
        out.stderr = '';
        process.stdout.write = ((chunk: string) => ((out.stdout += chunk), true)) as typeof process.stdout.write;
        process.stderr.write = ((chunk: string) => ((out.stderr += chunk), true)) as typeof process.stderr.write;
        let code: number;
        try {
          code = await main([name, ...args, '--netns', '/nonexistent-sy/ns', '--bpffs', '/nonexistent-sy/bpffs']);
        } finally {
          process.stdout.write = realOut;
          process.stderr.write = realErr;
        }
        codes[code] = (codes[code] ?? 0) + 1;
        const argv = JSON.stringify([name, ...args]);
        if (![0, 1, 2].includes(code)) expect.fail(`${argv} → exit ${code}`);
        // 1 is an answer (findings, differences), not an error: verify and diff only, nothing on stderr.
        if (code === 1 && (!['verify', 'diff'].includes(name) || out.stderr !== '' || out.stdout === '')) expect.fail(`${argv} → exit 1, stderr ${JSON.stringify(out.stderr)}`);
        if (code === 2 && (out.stderr.split('\n').length !== 2 || !out.stderr.endsWith('\n')) && !out.stdout.startsWith('usage:')) expect.fail(`${argv} → exit 2, stderr ${JSON.stringify(out.stderr)}`);
      }
    } finally {
      process.stdout.write = realOut;
      process.stderr.write = realErr;
    }
    expect(codes[2] ?? 0).toBeGreaterThan(500);
  }, 120_000);
});
