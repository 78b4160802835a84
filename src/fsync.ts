/**
 * fsync of a path (a directory after a rename into it): what makes a
 * rename durable, for every writer that promises "saved before visible".
 */
import fs from 'node:fs';

export function fsyncPath(p: string): void {
  const fd = fs.openSync(p, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
