/**
 * A dispatcher whose pins are gone while its link still holds the program to
 * the namespace: the bpffs was unmounted (or a new, empty one mounted over it)
 * under a running data plane. Measured on kernel 6.18 with sockets
 * registered: the link stays attached and keeps serving (with none
 * registered, the unmount detached it). Loading a new dispatcher beside it would run two
 * sk_lookup programs, the old one frozen on old bindings (a socket it picks
 * stands whatever the new one decides); so `load` looks for one first and
 * refuses. It cannot be pinned back whole: the program holds its
 * table, sockets and counters, but the label of each destination and the ABI
 * stamp lived only in pins (maps the program never reads), and they went with
 * the bpffs.
 *
 * The search takes two steps, because the agent runs with CAP_BPF,
 * CAP_NET_ADMIN and CAP_PERFMON and no CAP_SYS_ADMIN:
 *   1. BPF_PROG_QUERY on the namespace (CAP_NET_ADMIN): which sk_lookup
 *      programs are attached there at all. None, the usual case (a fresh
 *      boot, a new namespace): no orphan, and nothing more is asked.
 *   2. Some: the links are listed by id (BPF_LINK_GET_NEXT_ID and
 *      *_GET_FD_BY_ID, CAP_SYS_ADMIN only) to find one of this namespace
 *      running our program: exact.
 * When step 2 is refused (EPERM) nothing tells whose the programs are: a
 * program's name, link and maps are only reachable by id. The load then goes
 * on with a warning naming the program ids, rather than refusing: refusing
 * would make any other tool's sk_lookup program in the namespace a start
 * failure of the agent for as long as it is there (systemd restarting it in a
 * loop), while our own orphan needs the bpffs to have gone under a live data
 * plane, which an operator has to repair by hand anyway (see the error
 * below). The warning says how to tell (CAP_SYS_ADMIN: `switchyard load` as
 * root, or `bpftool prog show id N`).
 */
import fs from 'node:fs';
import { SwitchyardError, isKernelError } from '../errors.js';
import { ATTACH_SK_LOOKUP, Fd, LINK_TYPE_NETNS } from '../kernel/bpf.js';
import { native, type LinkInfo, type ProgInfo } from '../kernel/native.js';
import { PROGRAM_NAME } from './maps.js';
import type { Location } from './state.js';

/** The kernel keeps object names to 15 characters. */
const kernelName = (name: string) => name.slice(0, 15);

/** An object's info by its id, or undefined when it is gone (ids are listed, then opened: it may go between). */
function infoById(id: number, kind: 'link'): LinkInfo | undefined;
function infoById(id: number, kind: 'prog'): ProgInfo | undefined;
function infoById(id: number, kind: 'link' | 'prog'): LinkInfo | ProgInfo | undefined {
  let fd: Fd;
  try {
    fd = new Fd(native().getFdById(id, kind));
  } catch {
    return undefined;
  }
  try {
    return kind === 'link' ? native().objInfo(fd.fd, 'link') : native().objInfo(fd.fd, 'prog');
  } finally {
    fd.close();
  }
}

/** Ids of the sk_lookup programs attached to the namespace (CAP_NET_ADMIN). */
export function attachedPrograms(location: Location): number[] {
  const netns = new Fd(fs.openSync(location.netnsPath, 'r'));
  try {
    return native().progQuery(netns.fd, ATTACH_SK_LOOKUP);
  } finally {
    netns.close();
  }
}

export type OrphanSearch =
  | { kind: 'none' }
  | { kind: 'orphan'; linkId: number; progId: number }
  /** sk_lookup programs are attached, and whose they are could not be read (no CAP_SYS_ADMIN). */
  | { kind: 'unidentified'; progIds: number[] };

/** Whether an unpinned Switchyard dispatcher serves this namespace (see above). */
export function findOrphan(location: Location): OrphanSearch {
  const attached = attachedPrograms(location);
  if (attached.length === 0) return { kind: 'none' };
  let linkIds: number[];
  try {
    linkIds = native().linkIds();
  } catch (err) {
    if (isKernelError(err, 'EPERM')) return { kind: 'unidentified', progIds: attached };
    throw err;
  }
  for (const id of linkIds) {
    const link = infoById(id, 'link');
    if (!link || link.type !== LINK_TYPE_NETNS || link.attachType !== ATTACH_SK_LOOKUP || link.netnsIno !== location.netnsIno) continue;
    if (infoById(link.progId, 'prog')?.name === kernelName(PROGRAM_NAME)) return { kind: 'orphan', linkId: id, progId: link.progId };
  }
  return { kind: 'none' };
}

/**
 * Throws when an unpinned dispatcher still serves this namespace (see
 * above); returns a warning when sk_lookup programs are attached that could
 * not be identified.
 */
export function refuseBesideOrphan(location: Location): string | undefined {
  const found = findOrphan(location);
  if (found.kind === 'none') return undefined;
  if (found.kind === 'unidentified') {
    const ids = found.progIds.join(', ');
    return (
      `${found.progIds.length} sk_lookup program(s) already attached to ${location.netnsPath} (id ${ids}) run before this dispatcher; ` +
      `whether one is a Switchyard dispatcher whose pins were lost cannot be told without CAP_SYS_ADMIN (\`switchyard load\` as root tells, or \`bpftool prog show id ${found.progIds[0]}\`). ` +
      `If one is, a socket it picks by its old bindings wins over this one's: detach it (\`bpftool link detach\`), then re-register the sockets and push the bindings`
    );
  }
  throw new SwitchyardError(
    'EORPHAN',
    `a Switchyard dispatcher is still attached to ${location.netnsPath} without its pins in ${location.bpffs} (link ${found.linkId}, program ${found.progId}; was the bpffs unmounted?). ` +
      `It serves on with its last bindings; loading another beside it would run both. Its labels were lost with the pins: detach it (bpftool link detach id ${found.linkId}), load again, re-register the sockets and push the bindings`,
    { entry: location.netnsPath },
  );
}
