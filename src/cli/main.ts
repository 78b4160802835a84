/**
 * `switchyard <command>`: the operator's tool. Every command takes --netns and
 * --bpffs; read commands take --json; any error exits 2 with one line that
 * names the bad input. Exit status, for every command: 0 success, 1 findings
 * or differences (verify, diff: the answer is "no", and it is not an
 * error), 2 a usage error or any other error (a bad or unreadable file, the
 * kernel refusing, no dispatcher loaded, no agent answering …), so a script
 * can tell "the state has findings" from "the check could not run".
 */
import fs from 'node:fs';
import readline from 'node:readline';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { SwitchyardError, isKernelError } from '../errors.js';
import {
  parseBindingPrefix,
  parseLabel,
  parsePort,
  parseProtocol,
  type Binding,
} from '../bindings/binding.js';
import { parseAddress, type Prefix, maskWords } from '../net/address.js';
import { findStaleStates, locate, locateBase, type Location, type StaleState } from '../dispatcher/state.js';
import { readDesiredState } from '../desired/state.js';
import { DIFF_USAGE, VERIFY_USAGE, diffCommand, verifyCommand } from './verify.js';
import { FIREWALL_USAGE, firewallCommand, firewallVerdicts, type FirewallVerdict } from './firewall.js';
import { agentCommand, controlPlaneCommand, controlPlaneOverride, controlPlaneStatus } from './daemons.js';
import { LOCAL_USAGE, agentStatus, localCommand, refuseIfAgentManages } from './agent.js';
import { adminRequest } from '../agent/admin.js';
import { Dispatcher, load, removeStale, unload, upgrade, type BindingSpec, type LookupAnswer, type Status } from '../dispatcher/dispatcher.js';
import type { LookupQuery } from '../dispatcher/lookup.js';
import { listenFds, socketsOfProcess } from '../sockets/sockets.js';
import { versionInfo, versionLine } from '../version.js';
import { isJournalStream } from '../log.js';

/** Exit statuses (see the module comment and `--help`). */
export const EXIT_OK = 0;
export const EXIT_FINDINGS = 1;
export const EXIT_ERROR = 2;

interface Command {
  usage: string;
  /** Reads files only: no --netns/--bpffs. */
  offline?: boolean;
  summary: string;
  options?: ParseArgsConfig['options'];
  run(args: string[], flags: Record<string, string | boolean | undefined>, out: Output): Promise<number> | number;
}

const COMMON_OPTIONS = {
  netns: { type: 'string' },
  bpffs: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** Counters and serials are u64: JSON carries them as decimal strings. */
const bigintAsString = (_key: string, value: unknown) => (typeof value === 'bigint' ? value.toString() : value);

class Output {
  constructor(readonly json: boolean) {}
  data(value: unknown, human: () => string): void {
    process.stdout.write(this.json ? `${JSON.stringify(value, bigintAsString, 2)}\n` : `${human()}\n`);
  }
}

/** The change is in force (exit 0); what could not be tidied after the switch is said on stderr. */
function warnAfterSwitch(r: { warnings?: string[] }): void {
  for (const w of r.warnings ?? []) process.stderr.write(`switchyard: warning: ${singleLine(w)}\n`);
}

function usageError(message: string): SwitchyardError {
  return new SwitchyardError('EINVAL_ARGUMENT', message);
}

/** A command whose one optional argument names a subcommand (`agent status`); none runs `main`. */
function subcommand<T>(args: string[], usage: string, subs: Record<string, () => T>, main: () => T): T {
  if (args.length === 0) return main();
  const sub = args.length === 1 && Object.prototype.hasOwnProperty.call(subs, args[0]!) ? subs[args[0]!] : undefined;
  if (!sub) throw usageError(`unexpected argument ${JSON.stringify(args.join(' '))}: ${usage}`);
  return sub();
}

function expectArgs(args: string[], count: number, usage: string): void {
  if (args.length !== count) throw usageError(`expected ${count} argument${count === 1 ? '' : 's'}: ${usage}`);
}

const locationOf = (flags: Record<string, unknown>): Location =>
  locate({ netns: flags.netns as string | undefined, bpffs: flags.bpffs as string | undefined });

function withDispatcher<T>(flags: Record<string, unknown>, fn: (d: Dispatcher) => T): T {
  const d = Dispatcher.open(locationOf(flags));
  try {
    return fn(d);
  } finally {
    d.close();
  }
}

function parseBindingArgs(args: string[], usage: string): BindingSpec {
  expectArgs(args, 4, usage);
  const [label, protocol, prefix, port] = args as [string, string, string, string];
  const entry = `binding "${args.join(' ')}"`;
  return {
    label: parseLabel(label, entry),
    protocol: parseProtocol(protocol, entry),
    prefix: parseBindingPrefix(prefix, entry, true),
    port: parsePort(port, entry, true),
  };
}

function parseQuery(protocol: string, ip: string, port: string, entry: string): LookupQuery {
  const address = parseAddress(ip);
  if (!address) throw new SwitchyardError('EINVAL_ARGUMENT', `${entry}: ${JSON.stringify(ip)} is not an IPv4 or IPv6 address`, { entry });
  return { protocol: parseProtocol(protocol, entry), address, port: parsePort(port, entry, true) };
}

function table(rows: string[][]): string {
  if (rows.length === 0) return '';
  // A loop, not Math.max(...column): a spread of 130,000+ rows overflows the stack.
  const widths = rows[0]!.map((_, c) => rows.reduce((w, r) => Math.max(w, r[c]!.length), 0));
  return rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  ')).join('\n');
}

function describeAnswer(a: LookupAnswer & { firewall?: FirewallVerdict }): string {
  const firewall = a.firewall ? `; firewall: ${a.firewall.verdict}${a.firewall.rule ? ` (${a.firewall.chain}: ${a.firewall.rule})` : ''}${a.firewall.error ? ` (${a.firewall.error})` : ''}` : '';
  return describeDispatch(a) + firewall;
}

function describeDispatch(a: LookupAnswer): string {
  const query = `${a.protocol} ${a.address.includes(':') ? `[${a.address}]` : a.address}:${a.port}`;
  if (!a.binding) return `${query}: no binding matches; the kernel's normal socket lookup decides`;
  const b = `${a.binding.label} ${a.binding.protocol} ${a.binding.prefix} ${a.binding.port === 0 ? 'any port' : `port ${a.binding.port}`}`;
  switch (a.outcome) {
    case 'socket':
      return `${query}: binding ${b} → label ${a.label}, socket cookie ${a.socketCookie}`;
    case 'no-socket':
      return `${query}: binding ${b} → label ${a.label}, no socket registered: refused`;
    default:
      return `${query}: binding ${b} → label ${a.label}, socket could not be assigned (error ${a.assignError}): refused`;
  }
}

/** True when one prefix contains the other. */
function overlaps(a: Prefix, b: Prefix): boolean {
  if (a.family !== b.family) return false;
  const len = Math.min(a.length, b.length);
  return maskWords(a.words, len).every((w, i) => w === maskWords(b.words, len)[i]);
}

function printStatus(s: Status): string {
  const lines = [
    `network namespace  ${s.netns} (inode ${s.netnsInode})`,
    `state              ${s.stateDir}`,
    `program            id ${s.program.id} ${s.program.name}${s.program.jited ? ' (jited)' : ''}`,
    `link               id ${s.link.id}, program ${s.link.progId}`,
    s.table
      ? `bindings           ${s.table.bindingCount} (table serial ${s.table.serial}, map ${s.table.mapId}, ${s.table.bytes} bytes, rows ${s.table.rows} of ${s.table.capacityRows} in use, ${s.table.garbageRows} left by in-place changes)`
      : 'bindings           none published',
  ];
  if (s.destinations.length > 0) {
    lines.push('', table([
      ['LABEL', 'FAMILY', 'PROTO', 'BINDINGS', 'SOCKET', 'LOOKUPS', 'MISSES', 'ERRORS'],
      ...s.destinations.map((d) => [d.label, `ipv${d.family}`, d.protocol, String(d.bindings), d.socket ?? '-', d.stats.lookups, d.stats.misses, d.stats.errors]),
    ]));
  }
  return lines.join('\n');
}

const COMMANDS: Record<string, Command> = {
  version: {
    usage: 'version [--json]',
    offline: true,
    summary:
      'the package version, the dispatcher state\'s ABI and the sha256 of the BPF object load and upgrade would use (also -V, --version): "switchyard 0.1.0 (abi 3, bpf sha256 …)"; with --json {"version", "abi", "bpf_object": {"path", "sha256"}, "node"}. A missing object is said (sha256 null, with "error"), not an error: the version is still the answer',
    run(args, _flags, out) {
      expectArgs(args, 0, this.usage);
      const info = versionInfo();
      out.data(info, () => versionLine(info));
      return 0;
    },
  },
  load: {
    usage: 'load [--object FILE]',
    summary:
      "attach the dispatcher to the network namespace (no-op when already loaded with the same program; refused while one whose pins were lost still serves the namespace). A loaded dispatcher running another program than the object's is moved to it through its link, every map kept; one of another ABI (an upgrade that changed a map's layout) is migrated beside it and switched with one link update, bindings, destinations and sockets carried over. State under this namespace's inode number whose link serves no namespace (a deleted namespace's, the number reused) is moved aside, never adopted",
    options: { object: { type: 'string' } },
    run(args, flags, out) {
      expectArgs(args, 0, this.usage);
      const location = locationOf(flags);
      const r = load(location, flags.object as string | undefined);
      const aside = r.staleMovedTo ? `; stale state of a namespace that no longer exists moved to ${r.staleMovedTo} (switchyard remove-stale removes it)` : '';
      const data = {
        loaded: true,
        created: r.created,
        stateDir: location.dir,
        ...(r.staleMovedTo ? { staleMovedTo: r.staleMovedTo } : {}),
        ...(r.replaced ? { replaced: r.replaced } : {}),
        ...(r.migrated ? { migrated: r.migrated } : {}),
        ...(r.warnings ? { warnings: r.warnings } : {}),
      };
      out.data(data, () => {
        if (r.created) return `loaded dispatcher into ${location.netnsPath}; state pinned at ${location.dir}${aside}`;
        if (r.migrated) {
          const m = r.migrated;
          return `migrated the dispatcher (${location.dir}) from ABI ${m.fromAbi} to ${m.toAbi}: ${m.bindings} bindings; maps reused ${m.reused.join(', ') || 'none'}, new ${m.created.join(', ') || 'none'}; program ${m.previousProgramId} → ${m.programId}`;
        }
        if (r.replaced) {
          const p = r.replaced;
          return `program replaced through the pinned link (${location.dir}): id ${p.previousProgramId} → ${p.programId} (tag ${p.previousTag} → ${p.tag}); maps, bindings and sockets kept`;
        }
        return `dispatcher already loaded (${location.dir}); nothing changed`;
      });
      warnAfterSwitch(r); // loaded (exit 0), with what the operator should know on stderr
      return 0;
    },
  },
  unload: {
    usage: 'unload',
    summary:
      'detach the dispatcher and remove its pinned state (bindings and socket registrations are lost). For a --netns path that no longer exists (the namespace was deleted), removes the stale states under the bpffs instead, as remove-stale does',
    run(args, flags, out) {
      expectArgs(args, 0, this.usage);
      let location: Location;
      try {
        location = locationOf(flags);
      } catch (err) {
        if ((err as SwitchyardError).code !== 'ENO_NETNS') throw err;
        // Its inode number is unknown now; what it left is stale, found by its links.
        const r = removeStale(locateBase({ bpffs: flags.bpffs as string | undefined }));
        out.data({ removed: r.removed.length > 0, netnsGone: true, stale: r.removed }, () =>
          r.removed.length
            ? `${String(flags.netns)} no longer exists; removed ${r.removed.length} stale state(s): ${r.removed.map((x) => x.dir).join(', ')}`
            : `${String(flags.netns)} no longer exists and no stale state was found (a namespace's links are detached by its cleanup, which the kernel runs a moment after it is deleted: try again); nothing changed`,
        );
        return 0;
      }
      const r = unload(location);
      out.data({ removed: r.removed }, () => (r.removed ? `unloaded dispatcher from ${location.netnsPath}` : 'no dispatcher was loaded; nothing changed'));
      return 0;
    },
  },
  'remove-stale': {
    usage: 'remove-stale [--dry-run] [--json]',
    summary:
      "remove pinned state that serves no namespace: what load moved aside, and state whose link is attached to no namespace of its inode number (the namespace was deleted without unload). The live dispatchers are not touched. --dry-run lists them",
    options: { 'dry-run': { type: 'boolean' } },
    run(args, flags, out) {
      expectArgs(args, 0, this.usage);
      const base = locateBase({ bpffs: flags.bpffs as string | undefined });
      const r = flags['dry-run'] ? { removed: [] as StaleState[], stale: findStaleStates(base.base) } : { ...removeStale(base), stale: undefined };
      const listed = r.stale ?? r.removed;
      out.data(flags['dry-run'] ? { stale: listed } : { removed: listed }, () =>
        listed.length === 0 ? 'no stale state; nothing changed' : listed.map((x) => `${flags['dry-run'] ? 'stale' : 'removed'} ${x.dir}: ${x.reason}`).join('\n'),
      );
      return 0;
    },
  },
  upgrade: {
    usage: 'upgrade [--object FILE]',
    summary: 'replace the program through the pinned link, keeping maps, bindings and sockets',
    options: { object: { type: 'string' } },
    run(args, flags, out) {
      expectArgs(args, 0, this.usage);
      const r = upgrade(locationOf(flags), flags.object as string | undefined);
      out.data(r, () => `upgraded: program ${r.previousProgramId} → ${r.programId}`);
      return 0;
    },
  },
  status: {
    usage: 'status [--json]',
    summary: 'program, link, table and per-destination sockets and counters',
    run(args, flags, out) {
      expectArgs(args, 0, this.usage);
      const s = withDispatcher(flags, (d) => d.status());
      out.data(s, () => printStatus(s));
      return 0;
    },
  },
  bind: {
    usage: 'bind <label> <tcp|udp> <prefix|ip> <port> [--admin-socket PATH]',
    options: { 'admin-socket': { type: 'string' } },
    summary: 'bind a prefix (a bare address is a /32 or /128) and port (0 = any) to a label',
    run(args, flags, out) {
      const b = parseBindingArgs(args, this.usage);
      refuseIfAgentManages(locationOf(flags), flags, 'bind');
      const r = withDispatcher(flags, (d) => d.bind(b));
      warnAfterSwitch(r);
      out.data(r, () =>
        `${r.replaced ? `bound (was ${r.replaced})` : 'bound'}${r.inPlace ? ' in place' : ''}; ${r.bindings} bindings`,
      );
      return 0;
    },
  },
  unbind: {
    usage: 'unbind <label> <tcp|udp> <prefix|ip> <port> [--admin-socket PATH]',
    options: { 'admin-socket': { type: 'string' } },
    summary: 'remove a binding (the label must match)',
    run(args, flags, out) {
      const b = parseBindingArgs(args, this.usage);
      refuseIfAgentManages(locationOf(flags), flags, 'unbind');
      const r = withDispatcher(flags, (d) => d.unbind(b));
      warnAfterSwitch(r);
      out.data(r, () => `unbound${r.inPlace ? ' in place' : ''}; ${r.bindings} bindings`);
      return 0;
    },
  },
  bindings: {
    usage: 'bindings [--label L] [--protocol tcp|udp] [--prefix P] [--json]',
    summary: 'list bindings; --prefix keeps those overlapping P',
    options: { label: { type: 'string' }, protocol: { type: 'string' }, prefix: { type: 'string' } },
    run(args, flags, out) {
      expectArgs(args, 0, this.usage);
      const protocol = flags.protocol === undefined ? undefined : parseProtocol(flags.protocol, '--protocol');
      const prefix = flags.prefix === undefined ? undefined : parseBindingPrefix(flags.prefix, '--prefix', true);
      const label = flags.label as string | undefined;
      const all = withDispatcher(flags, (d) => d.bindings());
      const rows: Binding[] = [];
      for (let i = 0; i < all.count; i++) {
        if (label !== undefined && all.label(i) !== label) continue;
        if (protocol !== undefined && all.binding(i).protocol !== protocol) continue;
        if (prefix !== undefined && !overlaps(all.prefix(i), prefix)) continue;
        rows.push(all.binding(i));
      }
      out.data({ bindings: rows }, () =>
        rows.length === 0 ? 'no bindings' : table([['LABEL', 'PROTO', 'PREFIX', 'PORT'], ...rows.map((b) => [b.label, b.protocol, b.prefix, b.port === 0 ? 'any' : String(b.port)])]),
      );
      return 0;
    },
  },
  'load-bindings': {
    usage: 'load-bindings <file.json> [--admin-socket PATH]',
    options: { 'admin-socket': { type: 'string' } },
    summary:
      'replace the whole binding set from a desired-state file {"bindings":[{"label","protocol","prefix","port"}], "services":…, "https_only":…} (only its bindings are used here); the whole file is validated first, the table switched atomically',
    run(args, flags, out) {
      expectArgs(args, 1, this.usage);
      const next = readDesiredState(args[0]!).bindings;
      refuseIfAgentManages(locationOf(flags), flags, 'load-bindings');
      const r = withDispatcher(flags, (d) => d.replaceBindings(next));
      warnAfterSwitch(r);
      out.data(r, () =>
        `loaded ${r.bindings} bindings (+${r.added} −${r.removed}), table ${r.tableBytes} bytes, built in ${r.buildMs.toFixed(0)} ms, published in ${r.publishMs.toFixed(1)} ms`,
      );
      return 0;
    },
  },
  register: {
    usage: 'register <label> [--agent-socket PATH]',
    summary:
      "register the sockets systemd passed (LISTEN_FDS) for a label: directly in the dispatcher (needs CAP_BPF and CAP_NET_ADMIN), or with --agent-socket handed to a running agent over its registration socket (SCM_RIGHTS; no privileges, the agent checks this process's uid/gid against its allow-list for the label)",
    options: { 'agent-socket': { type: 'string' } },
    run(args, flags, out) {
      expectArgs(args, 1, this.usage);
      const label = parseLabel(args[0], 'label');
      const fds = listenFds();
      if (fds.length === 0) throw new SwitchyardError('ENO_SOCKETS', 'no sockets passed: LISTEN_FDS is unset or LISTEN_PID is not this process');
      if (typeof flags['agent-socket'] === 'string') {
        const r = adminRequest(flags['agent-socket'], { op: 'register', label }, fds) as { registered: Array<{ socket: string; family: number; protocol: string }> };
        out.data({ registered: r.registered }, () => r.registered.map((x) => `handed ${x.socket} to the agent: registered as ${label} ipv${x.family} ${x.protocol}`).join('\n'));
        return 0;
      }
      const results = withDispatcher(flags, (d) => fds.map((fd) => d.register(label, fd)));
      out.data({ registered: results.map((r) => ({ ...r.destination, socket: r.socket, replaced: r.replaced })) }, () =>
        results.map((r) => `registered ${r.socket} as ${label} ipv${r.destination.family} ${r.destination.protocol}`).join('\n'),
      );
      return 0;
    },
  },
  'register-pid': {
    usage: 'register-pid <pid> <label> <tcp|udp> <ip> <port>',
    summary: "register a running process's socket bound to ip:port (pidfd_getfd; needs ptrace rights)",
    run(args, flags, out) {
      expectArgs(args, 5, this.usage);
      const [pidText, labelText, protocol, ip, port] = args as [string, string, string, string, string];
      if (!/^[1-9][0-9]*$/.test(pidText)) throw usageError(`pid ${JSON.stringify(pidText)} is not a process id`);
      const label = parseLabel(labelText, 'label');
      const q = parseQuery(protocol, ip, port, `socket "${protocol} ${ip} ${port}"`);
      const fds = socketsOfProcess(Number(pidText), q.protocol, q.address, q.port);
      if (fds.length === 0) throw new SwitchyardError('ENO_SOCKETS', `process ${pidText} has no ${q.protocol} socket bound to ${ip} port ${q.port}`);
      try {
        // Sockets of one reuseport group share the address: the first is enough.
        const r = withDispatcher(flags, (d) => d.register(label, fds[0]!));
        out.data({ registered: [{ ...r.destination, socket: r.socket, replaced: r.replaced }] }, () =>
          `registered ${r.socket} of process ${pidText} as ${label} ipv${r.destination.family} ${r.destination.protocol}`,
        );
      } finally {
        for (const fd of fds) fs.closeSync(fd);
      }
      return 0;
    },
  },
  unregister: {
    usage: 'unregister <label> <ipv4|ipv6> <tcp|udp>',
    summary: 'remove the socket of a destination; its bindings then refuse traffic',
    run(args, flags, out) {
      expectArgs(args, 3, this.usage);
      const label = parseLabel(args[0], 'label');
      if (args[1] !== 'ipv4' && args[1] !== 'ipv6') throw usageError(`family ${JSON.stringify(args[1])} must be ipv4 or ipv6`);
      const protocol = parseProtocol(args[2], 'protocol');
      const r = withDispatcher(flags, (d) => d.unregister(label, args[1] === 'ipv4' ? 4 : 6, protocol));
      out.data(r, () => (r.removed ? `unregistered ${args.join(' ')}` : `no socket was registered for ${args.join(' ')}; nothing changed`));
      return 0;
    },
  },
  lookup: {
    usage: 'lookup <tcp|udp> <ip> <port> | lookup - [--json]',
    summary: 'run the loaded program on a query (BPF_PROG_TEST_RUN), and evaluate the firewall rules and sets now in the kernel for it; "-" reads "proto ip port" lines from stdin',
    async run(args, flags, out) {
      if (args.length === 1 && args[0] === '-') return lookupStream(flags, out);
      expectArgs(args, 3, this.usage);
      const q = parseQuery(args[0]!, args[1]!, args[2]!, `query "${args.join(' ')}"`);
      const [answer] = withDispatcher(flags, (d) => [...d.lookup([q])]);
      const verdictOf = await firewallVerdicts(flags);
      const withFirewall = { ...answer!, firewall: verdictOf(q.protocol, q.address, q.port) };
      out.data(withFirewall, () => describeAnswer(withFirewall));
      return 0;
    },
  },
  agent: {
    usage: 'agent --config FILE | agent status [--socket PATH]',
    summary:
      "the daemon: load or open the dispatcher, restore the last known good state, connect to the control plane (WSS, pinned CA, bearer token), apply pushes to the dispatcher and the firewall and acknowledge them; serves an admin socket (root) and a registration socket; runs until SIGTERM, logs JSON lines from agent.json's log_level on (trace, debug, info, warn, error or fatal; default info; in the journal with their syslog priorities, refusals at warn) and tells systemd what it serves (STATUS=, updated on every ACK and NACK). `agent status` asks a running agent (default socket /run/switchyard/admin.sock): the applied version, the connection, where the bindings come from (control plane, local overrides)",
    options: { config: { type: 'string' }, socket: { type: 'string' } },
    run(args, flags, out) {
      return subcommand<number | Promise<number>>(args, this.usage, { status: () => agentStatus(flags, out) }, () => agentCommand(flags));
    },
  },
  local: {
    usage: LOCAL_USAGE,
    summary:
      "change bindings on this machine while an agent runs, through its admin socket (root): a local bind sets its (protocol, prefix, port) to the label whatever the control plane says; a local unbind removes a local bind (the control plane's binding for the key, if any, comes back) or masks the control plane's binding. Pushes never revert local overrides; they persist across agent restarts, show in `agent status` and in the agent's heartbeats; `local clear` drops them all",
    options: { socket: { type: 'string' } },
    run(args, flags, out) {
      return localCommand(args, flags, out);
    },
  },
  'control-plane': {
    usage: 'control-plane --state FILE --listen HOST:PORT --cert FILE --key FILE --tokens FILE [--store DIR|postgres://… [--replica-name NAME] [--advertise https://HOST:PORT]] [--admin-token-file FILE] [--admin-tokens FILE] [--withdrawal-share PCT] [--rollout FILE] [--log-level LEVEL] | control-plane status --url https://HOST:PORT --ca FILE --token-file FILE [--json] | control-plane override --version N --url … --ca … --token-file ADMIN',
    summary:
      'the reference control plane: keeps its versions, the held and refused states, the rollout\'s stages and an audit log in --store (a directory, default `store` beside the state file, or a PostgreSQL URL), so a restart carries on with the same epoch and versions (an agent that has the current version is not sent it again), and saves every version there before any agent can see it; over PostgreSQL any number of replicas run (each --replica-name, default the host name): every one serves agents and reads, the one holding the publishing lease publishes (a lease of 3 s renewed every second, every write fenced by its term in the database), the others follow its versions and answer writes with 307 to its --advertise URL (503 while none leads), and agents list them all in control_plane.urls; --admin-tokens FILE ({"alice": "token", …}, mode 600) names the administrators of the API, /override and /status, and GET /v1/audit lists who proposed, confirmed or was refused what, from where (X-Request-Id kept), with the semantic diff summary and the outcome; validates the state file (and again whenever it changes) and verifies it exactly as `switchyard verify` does (a state with findings other than unreachable bindings is not published; the current version stays), logs its semantic difference from the current version, holds a state that withdraws more than --withdrawal-share percent (default 5, or 50 bindings, or all) of a service until `control-plane override --version N` confirms it, versions it, and pushes it to the agents (with --rollout FILE, {"stages": [{"name": "canary", "match": {"canary": "true"}}, …], "bake_seconds": N}, stage by stage: the next once every agent of the last has it and stayed healthy for the bake; a NACK, rising errors or climbing misses halt it, later stages keep the version they had; agents say their labels in agent.json "labels") holding a token in --tokens ({"agent-id": "token"}, mode 600) over WSS; GET /status (agent or admin token) shows each agent. `control-plane status` prints that view: the version in force and what it changed, a held version, the last refused state, and per agent connected or not, the applied version, a push in flight, the last heartbeat and the last NACK. `control-plane override --version N` (admin token) confirms that a withdrawal is meant: a held version is published, with the guard override, to every agent; the current version is pushed again, with it, to the agents whose own guard refused it. The daemon logs JSON lines on stdout from --log-level on (trace, debug, info, warn, error or fatal; default info); when stdout is the journal (systemd), each line carries its syslog priority (<7> trace/debug, <6> info, <4> warn, <3> error, <2> fatal), so `journalctl -p warning` shows the held, refused and unsaved states and the agents\' NACKs',
    options: { state: { type: 'string' }, store: { type: 'string' }, 'replica-name': { type: 'string' }, advertise: { type: 'string' }, listen: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' }, tokens: { type: 'string' }, 'admin-token-file': { type: 'string' }, 'admin-tokens': { type: 'string' }, 'withdrawal-share': { type: 'string' }, rollout: { type: 'string' }, url: { type: 'string' }, ca: { type: 'string' }, 'token-file': { type: 'string' }, version: { type: 'string' }, 'log-level': { type: 'string' } },
    run(args, flags, out) {
      // status and override print an answer and log nothing: a level there would be silently ignored.
      if (args.length > 0 && flags['log-level'] !== undefined) throw usageError(`--log-level applies to the control plane daemon only, not control-plane ${args.join(' ')}`);
      return subcommand(args, this.usage, { status: () => controlPlaneStatus(flags, out), override: () => controlPlaneOverride(flags, out) }, () => controlPlaneCommand(flags));
    },
  },
  verify: {
    usage: VERIFY_USAGE,
    offline: true,
    summary:
      'checks a desired-state file exactly (the whole address space of every port, nothing sampled): bindings no packet reaches (more specific ones cover all their addresses), keys bound twice, plaintext ports bound inside HTTPS-only ranges, labels with traffic but no service policy, and prefixes marked exclusive to a service ("exclusive": {"cdn": ["192.0.2.0/24"]}) where another service receives traffic. Each finding names the entries and gives a (protocol, address, port) witness. Exits 1 when there are findings, 0 when there are none',
    run(args, _flags, out) {
      return verifyCommand(args, out);
    },
  },
  diff: {
    usage: DIFF_USAGE,
    offline: true,
    summary:
      'the exact difference between two desired-state files in who receives the traffic: every (protocol, address range, ports) that changes service, with its address count, and a summary per pair of services ("spectrum loses 129 IPv4 addresses on all tcp ports to cdn"); computed from the precedence rules, not by sampling. Bindings that move without changing any answer give nothing. Exits 1 when something changes hands, 0 when nothing does',
    run(args, _flags, out) {
      return diffCommand(args, out);
    },
  },
  firewall: {
    usage: FIREWALL_USAGE,
    summary:
      'ipsets and iptables rules that agree with the bindings: plan (what would be written), apply (write only what differs), status (what is in the kernel; with a state file, whether it drifted), cleanup (remove everything Switchyard created), watch (stay in the foreground: apply the file whenever it changes, and every --interval seconds, default 90, read the kernel back and repair drift; JSON log lines from --log-level on, default info, a failed apply at warn, with syslog priorities when stdout is the journal; the rules stay when it stops). Reads the desired-state file of load-bindings (bindings, services, https_only).',
    options: { backend: { type: 'string' }, interval: { type: 'string' }, 'log-level': { type: 'string' } },
    run(args, flags, out) {
      return firewallCommand(args, flags, out);
    },
  },
};

async function lookupStream(flags: Record<string, unknown>, out: Output): Promise<number> {
  const d = Dispatcher.open(locationOf(flags));
  try {
    // The firewall's rules are read back first (child processes); stdin is
    // opened only then, or its end can pass while we wait and the loop below
    // never finishes.
    const verdictOf = await firewallVerdicts(flags);
    const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
    let n = 0;
    let buffer: string[] = [];
    const flush = () => {
      if (buffer.length) process.stdout.write(buffer.join(''));
      buffer = [];
    };
    const queries: LookupQuery[] = [];
    const answer = () => {
      let i = 0;
      for (const a of d.lookup(queries)) {
        const q = queries[i++]!;
        const withFirewall = { ...a, firewall: verdictOf(q.protocol, q.address, q.port) };
        buffer.push(out.json ? `${JSON.stringify(withFirewall)}\n` : `${describeAnswer(withFirewall)}\n`);
      }
      queries.length = 0;
      flush();
    };
    for await (const raw of lines) {
      n++;
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) continue;
      const parts = line.split(/\s+/);
      if (parts.length !== 3) throw new SwitchyardError('EINVAL_ARGUMENT', `stdin line ${n}: expected "proto ip port", got ${JSON.stringify(line)}`, { entry: `line ${n}` });
      queries.push(parseQuery(parts[0]!, parts[1]!, parts[2]!, `stdin line ${n}`));
      if (queries.length >= 1024) answer();
    }
    answer();
    return 0;
  } finally {
    d.close();
  }
}

function helpText(): string {
  return [
    'usage: switchyard <command> [arguments] [--netns PATH] [--bpffs PATH] [--json]',
    '',
    'Dispatches new connections and datagrams to service sockets by (protocol, prefix, port) bindings,',
    'in the kernel (BPF sk_lookup). State is pinned in bpffs and outlives this command.',
    '',
    'commands:',
    ...Object.values(COMMANDS).map((c) => `  ${c.usage}\n      ${c.summary}`),
    '',
    'options:',
    '  --netns PATH   network namespace file (default /proc/self/ns/net, i.e. the current one)',
    '  --bpffs PATH   bpf filesystem mount (default /sys/fs/bpf)',
    '  --json         machine-readable output (read commands; lookup - prints one object per line)',
    '  -h, --help     this help, or a command\'s usage',
    '  -V, --version  switchyard <version> (abi N, bpf sha256 HEX), as `switchyard version`; with --json, as `version --json`',
    '',
    'exit status (every command):',
    '  0  success',
    '  1  findings or differences: verify found something, diff found addresses or ports that change hands',
    '  2  usage error, or any other error (a bad or unreadable file, the kernel refusing, no dispatcher loaded, no agent answering, ...)',
  ].join('\n');
}

/** The verifier's reason is the line before "processed N insns"; otherwise the log's tail. */
function verifierVerdict(log: string): string {
  const lines = log.trim().split('\n');
  const at = lines.findIndex((l) => l.startsWith('processed '));
  return at > 0 ? lines[at - 1]! : lines.slice(-2).join(' | ');
}

/** Errors are one line on stderr, whatever the message (Node's parseArgs writes several). */
const singleLine = (message: string) => message.replace(/\s*\n\s*/g, ' ').trim();

function oneLine(err: unknown): string {
  if (err instanceof SwitchyardError) return err.message;
  if (isKernelError(err)) {
    const hint =
      err.code === 'EPERM' ? ` (needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; register-pid of another user's process also CAP_SYS_PTRACE)` : '';
    // Node's file errors carry the path: the one thing that says which file.
    const file = (err as NodeJS.ErrnoException).path;
    return `${err.syscall}${file ? ` ${file}` : ''} failed: ${err.code}${hint}${err.detail ? `: ${verifierVerdict(err.detail)}` : ''}`;
  }
  return err instanceof Error ? err.message : String(err);
}

export async function main(argv: string[]): Promise<number> {
  // The command is the first word that is not an option or an option's value,
  // so global options may come before it (switchyard --netns X status).
  const valued = new Set(['--netns', '--bpffs', '--object', '--label', '--protocol', '--prefix', '--backend', '--interval', '--config', '--state', '--listen', '--cert', '--key', '--tokens', '--admin-token-file', '--withdrawal-share', '--rollout', '--url', '--ca', '--token-file', '--socket', '--agent-socket', '--admin-socket', '--version', '--log-level']);
  let at = 0;
  while (at < argv.length && argv[at]!.startsWith('-') && argv[at] !== '-') at += valued.has(argv[at]!) ? 2 : 1;
  const name = argv[at] ?? (argv.some((a) => a === '--help' || a === '-h') ? '--help' : undefined);
  const rest = [...argv.slice(0, at), ...argv.slice(at + 1)];
  // `--version` is also an option of `control-plane override`, so it is the
  // version request only without a command (`switchyard --version [--json]`).
  if (name === undefined && argv.some((a) => a === '--version' || a === '-V')) return printVersion(argv);
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(`${helpText()}\n`);
    return name === undefined ? EXIT_ERROR : EXIT_OK;
  }
  // The command name is the operator's text: an own entry only (COMMANDS.constructor is Object).
  const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!command) {
    process.stderr.write(`switchyard: unknown command ${JSON.stringify(name)}; see switchyard --help\n`);
    return EXIT_ERROR;
  }
  let parsed;
  try {
    parsed = parseArgs({ args: rest, options: { ...COMMON_OPTIONS, ...command.options }, allowPositionals: true, strict: true });
  } catch (err) {
    process.stderr.write(`switchyard ${name}: ${singleLine((err as Error).message)}; usage: switchyard ${command.usage}\n`);
    return EXIT_ERROR;
  }
  if (parsed.values.help) {
    process.stdout.write(`usage: switchyard ${command.usage}${command.offline ? '' : ' [--netns PATH] [--bpffs PATH]'}\n\n${command.summary}\n`);
    return EXIT_OK;
  }
  const out = new Output(parsed.values.json === true);
  try {
    return await command.run(parsed.positionals, parsed.values as Record<string, string | boolean | undefined>, out);
  } catch (err) {
    // A daemon that cannot start says why here: under systemd (stderr is the journal's stream too) at priority 3, so `journalctl -p err` shows it.
    process.stderr.write(`${isJournalStream(2) ? '<3>' : ''}switchyard ${name}: ${singleLine(oneLine(err))}\n`);
    if (process.env.SWITCHYARD_DEBUG) console.error(err);
    // Every error, whatever its code: 1 is reserved for findings and differences.
    return EXIT_ERROR;
  }
}

/** `switchyard --version [--json]` (or -V): nothing else may come with it. */
function printVersion(argv: string[]): number {
  const other = argv.find((a) => a !== '--version' && a !== '-V' && a !== '--json');
  if (other !== undefined) {
    process.stderr.write(`switchyard: --version takes no argument but --json, not ${JSON.stringify(other)}\n`);
    return EXIT_ERROR;
  }
  let info: ReturnType<typeof versionInfo>;
  try {
    info = versionInfo();
  } catch (err) {
    process.stderr.write(`switchyard: ${singleLine(oneLine(err))}\n`);
    return EXIT_ERROR;
  }
  new Output(argv.includes('--json')).data(info, () => versionLine(info));
  return EXIT_OK;
}

