/**
 * Files of the repository (the addon, BPF objects, fixtures) from modules
 * that run both from source (vitest: src/...) and built (dist/src/...): the
 * root is the nearest ancestor holding package.json.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | undefined;

export function projectRoot(): string {
  if (root === undefined) {
    let dir = path.dirname(fileURLToPath(import.meta.url));
    while (!fs.existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
    root = dir;
  }
  return root;
}

export const projectPath = (...parts: string[]): string => path.join(projectRoot(), ...parts);
