/**
 * Secret files (tokens, TLS keys): refused when other users could read them.
 * A file of our own must be its owner's only (0600). A systemd credential
 * (LoadCredential=, a file in $CREDENTIALS_DIRECTORY) is accepted when no
 * other user can read it: systemd 252 makes them 0400, 257 makes them 0440
 * (group: the service's own), in a directory only the service may enter.
 */
import fs from 'node:fs';
import path from 'node:path';
import { SwitchyardError } from '../errors.js';

function isCredential(file: string, env: NodeJS.ProcessEnv): boolean {
  const dir = env.CREDENTIALS_DIRECTORY;
  if (!dir) return false;
  try {
    return path.dirname(fs.realpathSync(file)) === fs.realpathSync(dir);
  } catch {
    return false;
  }
}

export function readSecret(file: string, what: string, env: NodeJS.ProcessEnv = process.env): string {
  const mode = fs.statSync(file).mode & 0o777;
  if (isCredential(file, env)) {
    if (mode & 0o007) throw new SwitchyardError('EINVAL_FILE', `${file}: ${what} (a systemd credential) is mode ${mode.toString(8)}; other users can read it`, { entry: file });
  } else if (mode & 0o077) {
    throw new SwitchyardError('EINVAL_FILE', `${file}: ${what} is mode ${mode.toString(8)}; it must be readable by its owner only (chmod 600)`, { entry: file });
  }
  return fs.readFileSync(file, 'utf8');
}
