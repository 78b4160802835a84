/**
 * Pinned state is filed under the namespace's inode number, and the kernel
 * reuses those numbers as soon as a namespace is gone: a new namespace must
 * never adopt a dead one's dispatcher (whose link serves nothing).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { CLI, TestNamespace, isRoot } from '../support/netns.js';

let counter = 0;

/** A bare namespace (no routes), its state pinned in `bpffs`. */
function bareNamespace(): { name: string; path: string; ino: number } {
  const name = `sy-dead-${process.pid}-${++counter}`;
  execFileSync('ip', ['netns', 'add', name]);
  const file = `/run/netns/${name}`;
  return { name, path: file, ino: fs.statSync(file).ino };
}

function cli(args: string[]) {
  const r = spawnSync(CLI, args, { encoding: 'utf8' });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Until `fn` returns true or `ms` pass: a namespace's links are detached by its cleanup, which the kernel runs after `ip netns del` returns. */
async function eventually(fn: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe.skipIf(!isRoot)('a namespace is never mistaken for a dead one with its inode number', () => {
  let ns: TestNamespace;
  const dead: string[] = [];
  beforeEach(() => {
    ns = TestNamespace.create();
  });
  afterEach(() => {
    ns.destroy();
    for (const name of dead.splice(0)) spawnSync('ip', ['netns', 'del', name]);
  });

  /** The namespace inode a link is attached to (0 once its namespace is gone). */
  const linkNetns = (id: number) => (JSON.parse(execFileSync('bpftool', ['link', 'show', 'id', String(id), '-j'], { encoding: 'utf8' })) as { netns_ino: number }).netns_ino;

  /** A namespace with a dispatcher and a binding, deleted without unload; its link id once the kernel has detached it. */
  async function deadDispatcher(): Promise<{ ino: number; path: string; linkId: number }> {
    const a = bareNamespace();
    dead.push(a.name);
    const onA = (args: string[]) => cli([...args, '--netns', a.path, '--bpffs', ns.bpffs]);
    expect(onA(['load']).code).toBe(0);
    expect(onA(['bind', 'cdn', 'tcp', '192.0.2.0/24', '0']).code).toBe(0);
    const linkId = (JSON.parse(onA(['status', '--json']).stdout) as { link: { id: number } }).link.id;
    execFileSync('ip', ['netns', 'del', a.name]);
    dead.pop();
    await eventually(() => linkNetns(linkId) === 0);
    return { ino: a.ino, path: a.path, linkId };
  }

  it('state of a deleted namespace whose inode is reused: status and writes say it is stale, load attaches afresh and serves, remove-stale removes what was moved aside', async () => {
    const a = await deadDispatcher();
    // The kernel hands a's inode number to the next namespace (seen with `ip netns add`
    // right after `ip netns del`, but not on demand): the rename puts a's state where
    // a namespace with that number would look for its own.
    const base = path.join(ns.bpffs, 'switchyard');
    const ino = fs.statSync(ns.path).ino;
    fs.renameSync(path.join(base, String(a.ino)), path.join(base, String(ino)));

    for (const args of [['status'], ['bind', 'cdn', 'tcp', '198.51.100.0/24', '0'], ['bindings']]) {
      const r = ns.cli(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toContain(`${path.join(base, String(ino))} is stale: its link ${a.linkId} is attached to no namespace`);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }

    const loaded = ns.json<{ created: boolean; staleMovedTo: string }>(['load']);
    expect(loaded.created).toBe(true);
    expect(loaded.staleMovedTo).toMatch(new RegExp(`^${base}/stale-${ino}-\\d+$`));
    const status = ns.json<{ link: { id: number; netnsInode: number }; table: { bindingCount: number } }>(['status']);
    expect(status.link.netnsInode).toBe(ino);
    expect(status.link.id).not.toBe(a.linkId);
    expect(status.table.bindingCount).toBe(0); // nothing of a's adopted
    expect(ns.json<{ created: boolean }>(['load']).created).toBe(false); // and now it is this namespace's own

    await ns.startService('cdn', ['tcp4'], true);
    ns.ok(['bind', 'cdn', 'tcp', '192.0.2.0/24', '0']);
    expect(ns.probe([{ proto: 'tcp', addr: '192.0.2.1', port: 443 }])).toEqual(['cdn']);

    const removed = JSON.parse(cli(['remove-stale', '--bpffs', ns.bpffs, '--json']).stdout) as { removed: Array<{ dir: string }> };
    expect(removed.removed.map((r) => r.dir)).toEqual([loaded.staleMovedTo]);
    expect(fs.readdirSync(base)).toEqual([String(ino)]);
    expect(() => linkNetns(a.linkId)).toThrow(); // unpinned: the kernel freed the dead link
    expect(ns.probe([{ proto: 'tcp', addr: '192.0.2.1', port: 443 }])).toEqual(['cdn']); // ours untouched
  });

  it('unload of a namespace that no longer exists removes its stale state, and touches no live one', async () => {
    ns.ok(['load']);
    const a = await deadDispatcher();
    const base = path.join(ns.bpffs, 'switchyard');
    expect(fs.readdirSync(base).sort()).toEqual([String(a.ino), String(fs.statSync(ns.path).ino)].sort());
    const r = cli(['unload', '--netns', a.path, '--bpffs', ns.bpffs, '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ removed: true, netnsGone: true, stale: [{ dir: path.join(base, String(a.ino)) }] });
    expect(fs.readdirSync(base)).toEqual([String(fs.statSync(ns.path).ino)]);
    expect(ns.json<{ created: boolean }>(['load']).created).toBe(false);
  });
});
