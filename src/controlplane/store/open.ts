/**
 * `--store`: a PostgreSQL URL (postgres:// or postgresql://) or a directory.
 */
import { FileStore } from './file.js';
import { PostgresStore } from './postgres.js';
import type { ControlPlaneStore } from './store.js';

export function openStore(spec: string, onError?: (err: Error) => void): ControlPlaneStore {
  if (/^postgres(ql)?:\/\//.test(spec)) return new PostgresStore(spec, onError);
  return new FileStore(spec);
}
