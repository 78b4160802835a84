/**
 * Log priorities for journald (issue 16, part 3). Every daemon line went to
 * the journal at priority 6 (stdout under systemd), so `journalctl -p
 * warning` showed nothing. Now a line written to the journal's stream
 * starts with `<N>`, its level's syslog priority (sd-daemon(3)); anywhere
 * else it is the plain JSON it was. The level to log from is a setting:
 * `log_level` in agent.json, `--log-level` for control-plane and firewall
 * watch.
 */
import { afterAll, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { LOG_LEVELS, createLogger, isJournalStream, logLevelOption } from '../../src/log.js';
import { readAgentConfig } from '../../src/agent/agent.js';
import { writeAgentConfig } from '../support/agent-config.js';
import { runCli } from '../support/cli.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sy-log-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let files = 0;
/** A file opened for writing, as fd 1 is the journal's socket under systemd; its "<st_dev>:<st_ino>" as systemd writes it. */
function stream() {
  const file = path.join(dir, `out-${files++}`);
  const fd = fs.openSync(file, 'w');
  const st = fs.fstatSync(fd, { bigint: true });
  return { file, fd, id: `${st.dev}:${st.ino}` };
}

/**
 * Every level once, and the lines the file got once `expected` are there,
 * in level order. Waited for, not flushed: pino's destination writes
 * asynchronously and its flush() (minLength 0) answers before a write in
 * flight has landed. Sorted: fatal() flushes synchronously, which can
 * overtake a line still being written (pino's default destination does
 * the same).
 */
async function logEachLevel(log: Logger, file: string, expected: number): Promise<string[]> {
  for (const level of LOG_LEVELS) log[level]({ n: 1 }, `at ${level}`);
  const read = () => fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
  for (let i = 0; i < 250 && read().length < expected; i++) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 50)); // and nothing more arrives
  const level = (line: string) => (JSON.parse(line.slice(line.indexOf('{'))) as { level: number }).level;
  return read().sort((a, b) => level(a) - level(b));
}

describe('journal priorities', () => {
  it('knows the journal by $JOURNAL_STREAM naming the device and inode of the fd, nothing less', () => {
    const s = stream();
    const other = stream();
    expect(isJournalStream(s.fd, { JOURNAL_STREAM: s.id })).toBe(true);
    // Inherited by a process whose stdout is something else: not the journal.
    expect(isJournalStream(other.fd, { JOURNAL_STREAM: s.id })).toBe(false);
    for (const env of [{}, { JOURNAL_STREAM: '' }, { JOURNAL_STREAM: 'x:y' }, { JOURNAL_STREAM: `${s.id}:1` }, { JOURNAL_STREAM: s.id.split(':')[1]! }]) {
      expect(isJournalStream(s.fd, env), JSON.stringify(env)).toBe(false);
    }
    expect(isJournalStream(987_654, { JOURNAL_STREAM: s.id })).toBe(false); // a closed fd
  });

  it('in the journal: each line starts with its level\'s priority (trace/debug 7, info 6, warn 4, error 3, fatal 2), then the JSON', async () => {
    const s = stream();
    const lines = await logEachLevel(createLogger({ component: 'test' }, { fd: s.fd, level: 'trace', env: { JOURNAL_STREAM: s.id } }), s.file, 6);
    expect(lines.map((l) => l.slice(0, 3))).toEqual(['<7>', '<7>', '<6>', '<4>', '<3>', '<2>']);
    expect(lines.map((l) => JSON.parse(l.slice(3)) as { level: number; msg: string; component: string })).toMatchObject(
      LOG_LEVELS.map((level, i) => ({ level: (i + 1) * 10, msg: `at ${level}`, component: 'test' })),
    );
  });

  it('anywhere else: plain JSON lines, as before', async () => {
    const s = stream();
    const lines = await logEachLevel(createLogger({ component: 'test' }, { fd: s.fd, env: { JOURNAL_STREAM: stream().id } }), s.file, 4);
    expect(lines).toHaveLength(4); // info and up, the default
    for (const l of lines) expect(l.startsWith('{"level":')).toBe(true);
  });

  it('the level drops what is below it, in the journal too', async () => {
    const s = stream();
    const lines = await logEachLevel(createLogger({}, { fd: s.fd, level: 'warn', env: { JOURNAL_STREAM: s.id } }), s.file, 3);
    expect(lines.map((l) => l.slice(0, 3))).toEqual(['<4>', '<3>', '<2>']);
  });
});

describe('log_level and --log-level', () => {
  const config = (extra: Record<string, unknown>) => readAgentConfig(writeAgentConfig(dir, { agentId: 'edge-1', port: 1, ca: 'ca', token: 't', netns: '/run/netns/x', bpffs: '/sys/fs/bpf', extra }));

  it('agent.json: log_level, info by default, one of pino\'s level names', () => {
    expect(config({}).logLevel).toBe('info');
    for (const level of LOG_LEVELS) expect(config({ log_level: level }).logLevel).toBe(level);
    for (const bad of ['verbose', 'WARN', 'silent', '', 30, null]) {
      let err: (Error & { code?: string; entry?: string }) | undefined;
      try {
        config({ log_level: bad });
      } catch (e) {
        err = e as Error & { code?: string; entry?: string };
      }
      expect(err, String(bad)).toBeDefined();
      expect(err!.code).toBe('EINVAL_FILE');
      expect(err!.message).toBe(`${path.join(dir, 'agent.json')}: log_level ${JSON.stringify(bad)} must be one of trace, debug, info, warn, error, fatal`);
      expect(err!.entry).toBe(`${path.join(dir, 'agent.json')}: log_level`);
    }
  });

  it('--log-level: info when absent, a usage error naming the option otherwise', () => {
    expect(logLevelOption(undefined)).toBe('info');
    expect(logLevelOption('debug')).toBe('debug');
    expect(() => logLevelOption('loud')).toThrow('--log-level "loud" must be one of trace, debug, info, warn, error, fatal');
  });

  it('the daemons take it, before any file is read; the commands that log nothing refuse it; --help says it', async () => {
    expect(await runCli(['control-plane', '--log-level', 'loud', '--state', '/nonexistent'])).toEqual({
      code: 2,
      stdout: '',
      stderr: 'switchyard control-plane: --log-level "loud" must be one of trace, debug, info, warn, error, fatal\n',
    });
    expect((await runCli(['firewall', 'watch', '/nonexistent.json', '--log-level', 'loud'])).stderr).toBe('switchyard firewall: --log-level "loud" must be one of trace, debug, info, warn, error, fatal\n');
    // A valid level: on to the next check (the state file), not refused.
    expect((await runCli(['--log-level', 'debug', 'control-plane', '--state', path.join(dir, 'none.json')])).stderr).toMatch(/control-plane needs --listen/);
    expect((await runCli(['firewall', 'plan', 'x.json', '--log-level', 'debug'])).stderr).toBe('switchyard firewall: --log-level applies to firewall watch only (firewall plan logs nothing)\n');
    expect((await runCli(['control-plane', 'status', '--log-level', 'debug'])).stderr).toBe('switchyard control-plane: --log-level applies to the control plane daemon only, not control-plane status\n');
    const help = (await runCli(['--help'])).stdout;
    expect(help).toMatch(/control-plane --state FILE .*\[--log-level LEVEL\] \|/);
    expect(help).toMatch(/firewall plan\|apply\|status\|cleanup\|watch .*\[--log-level LEVEL\]/);
    expect(help).toMatch(/agent\.json's log_level/);
    expect(help).toMatch(/journalctl -p warning/);
  });
});

describe('a command\'s error line', () => {
  it('carries priority 3 when stderr is the journal (a daemon that cannot start says why at err), and nothing otherwise', async () => {
    const st = fs.fstatSync(2, { bigint: true });
    const saved = process.env.JOURNAL_STREAM;
    try {
      process.env.JOURNAL_STREAM = `${st.dev}:${st.ino}`;
      expect((await runCli(['agent'])).stderr).toBe('<3>switchyard agent: agent needs --config FILE\n');
      process.env.JOURNAL_STREAM = stream().id;
      expect((await runCli(['agent'])).stderr).toBe('switchyard agent: agent needs --config FILE\n');
    } finally {
      if (saved === undefined) delete process.env.JOURNAL_STREAM;
      else process.env.JOURNAL_STREAM = saved;
    }
  });
});
