/** A throwaway CA and a server certificate for 127.0.0.1, made with openssl, for channel tests. */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface TestCerts {
  ca: string;
  cert: string;
  key: string;
  otherCa: string;
  dir: string;
}

export function makeCerts(): TestCerts {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-certs-'));
  const at = (f: string) => path.join(dir, f);
  const ssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  ssl('req', '-x509', ...ec, '-keyout', at('ca.key'), '-out', at('ca.pem'), '-days', '1', '-subj', '/CN=switchyard-test-ca');
  ssl('req', '-x509', ...ec, '-keyout', at('other.key'), '-out', at('other.pem'), '-days', '1', '-subj', '/CN=someone-else');
  ssl('req', ...ec, '-keyout', at('server.key'), '-out', at('server.csr'), '-subj', '/CN=localhost');
  fs.writeFileSync(at('ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  ssl('x509', '-req', '-in', at('server.csr'), '-CA', at('ca.pem'), '-CAkey', at('ca.key'), '-CAcreateserial', '-out', at('server.pem'), '-days', '1', '-extfile', at('ext'));
  const read = (f: string) => fs.readFileSync(at(f), 'utf8');
  return { ca: read('ca.pem'), cert: read('server.pem'), key: read('server.key'), otherCa: read('other.pem'), dir };
}
