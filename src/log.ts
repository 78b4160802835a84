/**
 * The daemons' loggers (the agent, `control-plane`, `firewall watch`): one
 * JSON line per event on stdout (pino), as before. Under systemd, stdout is
 * a stream into the journal, which files every line at priority 6 (info)
 * unless the line starts with `<N>` (sd-daemon(3); journald's
 * SyslogLevelPrefix=, on by default): so `journalctl -p warning` showed
 * nothing, refusals and failures included. When stdout *is* the journal,
 * each line gets the prefix of its pino level; anywhere else (a pipe, a
 * file, a terminal, the tests) the lines are plain JSON, byte for byte what
 * they were.
 *
 * "Is the journal" is decided as systemd.exec(5) says: $JOURNAL_STREAM holds
 * the device and inode numbers of the stream systemd connected, and fd 1
 * must still be that stream (the variable is inherited by children whose
 * stdout is something else, and a unit may redirect stdout to a file).
 */
import fs from 'node:fs';
import { pino, type DestinationStream, type Logger } from 'pino';
import { SwitchyardError } from './errors.js';

/** pino's level names, lowest first: what `log_level` and `--log-level` take. */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const isLogLevel = (value: unknown): value is LogLevel => typeof value === 'string' && (LOG_LEVELS as readonly string[]).includes(value);

/** Why `value` is not a level ("... must be one of ..."), for the caller to name its entry. */
export const LOG_LEVEL_RULE = `must be one of ${LOG_LEVELS.join(', ')}`;

/**
 * syslog priorities (sd-daemon(3): 7 debug, 6 info, 4 warning, 3 err,
 * 2 crit) by pino's numeric level. fatal is crit, not emerg: emerg is "the
 * system is unusable" and journald broadcasts it to every terminal.
 */
const PRIORITY: Readonly<Record<number, string>> = { 10: '<7>', 20: '<7>', 30: '<6>', 40: '<4>', 50: '<3>', 60: '<2>' };

/** Whether `fd` is the stream systemd connected to the journal ($JOURNAL_STREAM = "<st_dev>:<st_ino>", decimal). */
export function isJournalStream(fd = 1, env: NodeJS.ProcessEnv = process.env): boolean {
  const m = /^([0-9]+):([0-9]+)$/.exec(env.JOURNAL_STREAM ?? '');
  if (!m) return false;
  try {
    // bigint: st_dev of a socket can exceed 2^53 on some kernels' encodings; compared exactly.
    const st = fs.fstatSync(fd, { bigint: true });
    return st.dev === BigInt(m[1]!) && st.ino === BigInt(m[2]!);
  } catch {
    return false;
  }
}

/**
 * A destination that writes each line with the `<N>` prefix of its level.
 * pino tells a stream marked with `pino.metadata` the level of the line it
 * is about to write (`lastLevel`, set before every `write`): one string
 * concatenation per line, no parsing, no second stream per level.
 */
export function withPriorityPrefix(dest: DestinationStream & { flush?: (cb?: (err?: Error) => void) => void; flushSync?: () => void }): DestinationStream {
  const stream = {
    [pino.symbols.needsMetadataGsym]: true as const,
    lastLevel: 30,
    lastTime: '',
    lastMsg: '',
    lastObj: {},
    lastLogger: undefined as unknown as Logger,
    write(line: string) {
      dest.write((PRIORITY[stream.lastLevel] ?? '<6>') + line);
    },
    // logger.flush() and pino's exit handling reach the real destination through these.
    flush(cb?: (err?: Error) => void) {
      if (dest.flush) dest.flush(cb);
      else cb?.();
    },
    flushSync() {
      dest.flushSync?.();
    },
  };
  return stream;
}

export interface LogOptions {
  level?: LogLevel;
  /** The file descriptor the lines go to (1; the tests give a file's). */
  fd?: number;
  env?: NodeJS.ProcessEnv;
}

/**
 * A daemon's logger: `base` fields on every line, lines below `level`
 * (default info) dropped. On stdout outside the journal this is exactly
 * `pino({base})` as the daemons made it before (pino's own destination:
 * sonic-boom on fd 1, writes issued at once, flushed at exit). In the
 * journal, the same destination behind the priority prefix.
 */
export function createLogger(base: Record<string, unknown>, options: LogOptions = {}): Logger {
  const fd = options.fd ?? 1;
  const opts = { base, level: options.level ?? 'info' };
  // sync: false is what pino's default destination is; `minLength: 0` (the default) writes every line at once.
  const destination = () => pino.destination({ dest: fd, sync: false });
  if (isJournalStream(fd, options.env)) return pino(opts, withPriorityPrefix(destination()));
  return fd === 1 ? pino(opts) : pino(opts, destination());
}

/** `--log-level LEVEL` of a daemon command (absent: info); a usage error naming the option otherwise. */
export function logLevelOption(value: unknown): LogLevel {
  if (value === undefined) return 'info';
  if (!isLogLevel(value)) throw new SwitchyardError('EINVAL_ARGUMENT', `--log-level ${JSON.stringify(value)} ${LOG_LEVEL_RULE}`, { entry: '--log-level' });
  return value;
}
