/**
 * A dispatcher whose pins are gone while its link still holds the program to
 * the namespace: the bpffs was unmounted (or a new, empty one mounted over it)
 * under a running data plane. Measured on kernel 6.18: the link stays attached
 * and keeps serving. Loading a new dispatcher beside it would run two
 * sk_lookup programs, the old one frozen on old bindings; so `load` looks for
 * one first, by its link (a netns link of sk_lookup attach type, in this
 * namespace, running our program) and refuses. It cannot be pinned back
 * whole: the program holds its table, sockets and counters, but the label of
 * each destination and the ABI stamp lived only in pins (maps the program
 * never reads), and they went with the bpffs.
 */
import { SwitchyardError } from '../errors.js';
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

/** The link (and its program) of an unpinned Switchyard dispatcher in this namespace, if there is one. */
export function findOrphan(location: Location): { linkId: number; progId: number } | undefined {
  for (const id of native().linkIds()) {
    const link = infoById(id, 'link');
    if (!link || link.type !== LINK_TYPE_NETNS || link.attachType !== ATTACH_SK_LOOKUP || link.netnsIno !== location.netnsIno) continue;
    if (infoById(link.progId, 'prog')?.name === kernelName(PROGRAM_NAME)) return { linkId: id, progId: link.progId };
  }
  return undefined;
}

/** Throws when an unpinned dispatcher still serves this namespace (see above). */
export function refuseBesideOrphan(location: Location): void {
  const orphan = findOrphan(location);
  if (!orphan) return;
  throw new SwitchyardError(
    'EORPHAN',
    `a Switchyard dispatcher is still attached to ${location.netnsPath} without its pins in ${location.bpffs} (link ${orphan.linkId}, program ${orphan.progId}; was the bpffs unmounted?). ` +
      `It serves on with its last bindings; loading another beside it would run both. Its labels were lost with the pins: detach it (bpftool link detach id ${orphan.linkId}), load again, re-register the sockets and push the bindings`,
    { entry: location.netnsPath },
  );
}
