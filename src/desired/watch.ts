/**
 * Follows a desired-state file: validates it now and whenever it changes
 * (editors replace files by rename, so the directory is watched and events
 * filtered by name), hands each new valid state on, and logs a file that
 * does not validate while the last good state stays in force.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { readDesiredState, type DesiredState } from './state.js';

export interface StateFileWatch {
  /** Whether a valid state has been handed on yet. */
  readonly loaded: boolean;
  close(): void;
}

export function watchStateFile(file: string, log: Logger, onState: (state: DesiredState, why: string) => void): StateFileWatch {
  let last = '';
  const load = (why: string) => {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      log.error({ err: (err as Error).message }, 'cannot read the state file; keeping the last good state');
      return;
    }
    if (text === last) return;
    try {
      const state = readDesiredState(file);
      last = text;
      onState(state, why);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'state file refused; keeping the last good state');
    }
  };
  load('start');
  const watcher = fs.watch(path.dirname(path.resolve(file)), (_event, name) => {
    if (name === path.basename(file)) load('file changed');
  });
  return {
    get loaded() {
      return last !== '';
    },
    close: () => watcher.close(),
  };
}
