import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readSecret } from '../../src/cli/secret.js';

describe('secret files', () => {
  let dir: string;
  let creds: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-secret-'));
    creds = path.join(dir, 'credentials');
    fs.mkdirSync(creds, { mode: 0o500 | 0o200 });
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
  const write = (file: string, mode: number) => {
    fs.writeFileSync(file, 'secret\n');
    fs.chmodSync(file, mode);
    return file;
  };

  it('a file of our own: its owner only', () => {
    expect(readSecret(write(path.join(dir, 'token'), 0o600), 'the token', {})).toBe('secret\n');
    expect(() => readSecret(write(path.join(dir, 'token'), 0o640), 'the token', {})).toThrow(/mode 640; it must be readable by its owner only/);
  });

  it("a systemd credential as systemd 257 makes it (0440, the service's group) is accepted; one others can read is not", () => {
    const env = { CREDENTIALS_DIRECTORY: creds };
    expect(readSecret(write(path.join(creds, 'tokens.json'), 0o440), 'the agent tokens', env)).toBe('secret\n');
    expect(readSecret(write(path.join(creds, 'key'), 0o400), 'the TLS key', env)).toBe('secret\n');
    expect(() => readSecret(write(path.join(creds, 'loose'), 0o444), 'the admin token', env)).toThrow(/a systemd credential\) is mode 444; other users can read it/);
    // The same mode outside the credentials directory: refused.
    expect(() => readSecret(write(path.join(dir, 'tokens.json'), 0o440), 'the agent tokens', env)).toThrow(/mode 440; it must be readable by its owner only/);
  });
});
