/**
 * A change of ABI (the layout of the pinned maps) without an outage: `load`
 * of a version that finds state of another ABI builds its own maps and
 * program beside the old ones, carries the bindings, destinations and
 * sockets over, switches the link (BPF_LINK_UPDATE) and then the
 * directories. It works in both directions (N → N+1 and back), so it may
 * rely only on what every ABI keeps of another's state, the stable part:
 *
 * - the state directory's pin names: `link`, `program`, `meta`, `generation`,
 *   `table` (or `table_next`, see table.ts), and each map pinned under its
 *   own name;
 * - `meta`'s first 8 bytes: the magic and the ABI version;
 * - a map's name stands for its meaning: a pinned map with the name, type,
 *   key size, value size, max entries and flags this version expects is
 *   this version's map and is reused as it is (bpf_map__reuse_fd). Whoever
 *   changes what a map's values mean without changing its shape must rename
 *   it (bpf/switchyard.h says so beside SY_ABI_VERSION);
 * - the table's encoding is named by its header magic (SY_HEADER_MAGIC), not
 *   by the ABI: a published table with our magic and row size is decoded
 *   whatever ABI wrote it. An encoding change must change the magic.
 *
 * Per map: `sockets` must be reused (a sockmap's sockets cannot be read back
 * as fds from user space), and so must `destinations` (the sockets map's
 * keys are its ids, and it alone has the labels); if either changed shape
 * the migration is refused before anything changes (see socketsChanged).
 * `destination_stats` and `trace` are reused when stable, new otherwise
 * (counters then restart: said in the result's warnings). `meta` is always
 * new (it carries the new stamp) and so are `generation` and the table,
 * rebuilt from the decoded bindings. Bindings come from the old published
 * table only (ours, or ABI 3's, whose encoding the decoder still reads):
 * when its encoding is neither the migration is refused, naming
 * it (a caller that holds the bindings, as the agent does its last known
 * good state, could supply them instead: not built).
 *
 * Steps, under the writer lock:
 *   1. everything new pinned in a temporary directory (tmp-<ino>-<pid>), the
 *      link pinned there too;
 *   2. BPF_LINK_UPDATE to the new program: the switch for packets;
 *   3. renameat2(RENAME_EXCHANGE) of the two directories: the switch for
 *      user space, in one step;
 *   4. the old state, now under the temporary name, removed.
 * A writer dead before 2 leaves the old state serving and a temporary
 * directory the next writer removes (removeAbandonedTemps). Dead between 2
 * and 3: the new program serves (its maps held by it), the state directory
 * still holds the old ABI's pins, its table still the latest (the lock was
 * held): this version's next load migrates again from it; the old
 * version's next load finds its own ABI with a link running a program that
 * is not its pinned one and replaces it (replaceProgram). Dead between 3
 * and 4: the state is complete; the old one is removed as abandoned.
 */
import fs from 'node:fs';
import path from 'node:path';
import { SwitchyardError, isKernelError } from '../errors.js';
import { BpfMap, Fd, describeMismatch, u32Key, type MapSpec } from '../kernel/bpf.js';
import { native, type MapInfo } from '../kernel/native.js';
import { buildTable, emptyInput } from '../trie/builder.js';
import { decodeTable } from '../trie/decoder.js';
import { ABI_VERSION, HEADER, HEADER_MAGIC, LEGACY_HEADER_MAGIC, ROW_BYTES } from '../trie/layout.js';
import { MAPS, MAP_NAMES, capacityFor, checkLoadedObject, type MapName } from './maps.js';
import { type Location, metaValue, removeStateDir, tempDirFor } from './state.js';
export { pinnedAbi } from './state.js';
import { loadWithCapacity, openCurrent, publishTable } from './table.js';

/** Maps that must be carried over as they are: without them the sockets would be lost. */
const CARRIED: readonly MapName[] = ['sockets', 'destinations'];
/** Maps always made new. */
const FRESH: readonly MapName[] = ['meta', 'generation'];

export interface Migration {
  fromAbi: number;
  toAbi: number;
  bindings: number;
  previousProgramId: number;
  programId: number;
  /** Maps carried over as they were, and maps made new. */
  reused: MapName[];
  created: MapName[];
  /** Reading and rebuilding the table, loading the program, and from the link update to the directory swap. */
  buildMs: number;
  loadMs: number;
  switchMs: number;
}

function openPinned(dir: string, name: string): { fd: Fd; info: MapInfo } | undefined {
  let fd: number;
  try {
    fd = native().objGet(path.join(dir, name));
  } catch (err) {
    if (isKernelError(err, 'ENOENT')) return undefined;
    throw err;
  }
  try {
    return { fd: new Fd(fd), info: native().objInfo(fd, 'map') };
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

const shape = (i: Pick<MapSpec, 'type' | 'keySize' | 'valueSize' | 'maxEntries' | 'flags'>) =>
  `type ${i.type}, key ${i.keySize} B, value ${i.valueSize} B, ${i.maxEntries} entries, flags ${i.flags}`;

function socketsChanged(location: Location, fromAbi: number, name: MapName, info: MapInfo | undefined): SwitchyardError {
  const found = info ? `has ${shape(info)}` : 'is missing';
  return new SwitchyardError(
    'EINCOMPATIBLE_STATE',
    `${location.dir} holds dispatcher state of ABI ${fromAbi}, whose ${name} map ${found} where ABI ${ABI_VERSION} expects ${shape(MAPS[name])}. ` +
      `It cannot be carried over, and the registered sockets with it (a sockmap's sockets cannot be read back from user space): migrating would refuse every bound address until each service registers again. ` +
      `Nothing was changed; the old dispatcher serves on. To accept that outage: \`switchyard unload\`, \`switchyard load\`, register the sockets again and push the bindings`,
    { entry: location.dir },
  );
}

/** The published table of an old state, decoded: its encoding must be ours (header magic, row size). */
function readOldBindings(location: Location, fromAbi: number) {
  const unreadable = (why: string) => new SwitchyardError('EINCOMPATIBLE_STATE', `${location.dir} (ABI ${fromAbi}): ${why}; its bindings cannot be read`, { entry: location.dir });
  const generation = openPinned(location.dir, 'generation');
  if (!generation) throw unreadable('no generation map');
  let current: ReturnType<typeof openCurrent>;
  try {
    if (describeMismatch(MAPS.generation, generation.info)) throw unreadable(`its generation map has ${shape(generation.info)}`);
    current = openCurrent(location.dir, new BpfMap(generation.fd.fd, MAPS.generation));
  } finally {
    generation.fd.close();
  }
  if (!current) return { input: undefined, serial: 0n };
  try {
    const info = current.map.info();
    if (describeMismatch(current.map.spec, info)) throw unreadable(`its table is not in this version's encoding (${shape(info)}, expected rows of ${ROW_BYTES} B)`);
    const mapped = current.map.mmap(false);
    const words = new Uint32Array(mapped.byteLength / 4);
    try {
      words.set(new Uint32Array(mapped));
    } finally {
      native().unmap(mapped);
    }
    const view = new DataView(words.buffer);
    const magic = view.getUint32(HEADER.magic, true);
    if (magic !== HEADER_MAGIC && magic !== LEGACY_HEADER_MAGIC) {
      throw unreadable(`its table's encoding (header magic 0x${magic.toString(16)}) is not this version's (0x${HEADER_MAGIC.toString(16)})`);
    }
    // The encoding is the magic's (the decoder reads ABI 3's too); the
    // decoder also checks the magic and ABI fields, which a copy can say.
    view.setUint32(HEADER.magic, HEADER_MAGIC, true);
    view.setUint32(HEADER.abiVersion, ABI_VERSION, true);
    return { input: decodeTable(words), serial: view.getBigUint64(HEADER.serial, true) };
  } finally {
    current.map.close();
  }
}

/** Moves a state of ABI `fromAbi` to this version's (see above). The caller holds the writer lock. */
export function migrate(location: Location, objectPath: string, fromAbi: number): { migration: Migration; warnings: string[] } {
  const started = performance.now();
  const warnings: string[] = [];
  const old: Partial<Record<MapName, { fd: Fd; info: MapInfo }>> = {};
  const owned: Fd[] = [];
  const temp = tempDirFor(location);
  try {
    for (const name of MAP_NAMES) {
      if (FRESH.includes(name)) continue;
      const pinned = openPinned(location.dir, name);
      if (pinned) {
        owned.push(pinned.fd);
        old[name] = pinned;
      }
    }
    const reuse: Record<string, number> = {};
    const reused: MapName[] = [];
    const created: MapName[] = [];
    for (const name of MAP_NAMES) {
      const pinned = old[name];
      if (pinned && !describeMismatch(MAPS[name], pinned.info)) {
        reuse[name] = pinned.fd.fd;
        reused.push(name);
        continue;
      }
      if (CARRIED.includes(name)) throw socketsChanged(location, fromAbi, name, pinned?.info);
      created.push(name);
      if (name === 'destination_stats') warnings.push(`the per-destination counters of ABI ${fromAbi} have another layout (${shape(pinned!.info)}); they start again from zero`);
    }

    const { input, serial } = readOldBindings(location, fromAbi);
    const built = buildTable(input ?? emptyInput(), serial + 1n);
    const capacity = capacityFor(built.rows);
    const built_ = performance.now();

    const { maps, programs } = loadWithCapacity(objectPath, reuse, capacity);
    for (const fd of [...Object.values(maps), ...Object.values(programs)]) owned.push(new Fd(fd));
    const loaded = performance.now();
    const prog = checkLoadedObject(objectPath, maps, programs);
    native().mapUpdate(maps.meta!, u32Key(0), metaValue());

    // 1. Beside the old state, complete.
    if (fs.existsSync(temp)) removeStateDir(temp);
    fs.mkdirSync(temp, { mode: 0o700 });
    publishTable(temp, new BpfMap(maps.generation!, MAPS.generation), built, capacity);
    for (const name of MAP_NAMES) native().objPin(maps[name]!, path.join(temp, name));
    native().objPin(prog, path.join(temp, 'program'));
    const link = new Fd(native().objGet(path.join(location.dir, 'link')));
    owned.push(link);
    native().objPin(link.fd, path.join(temp, 'link'));
    const previousProgramId = native().objInfo(link.fd, 'link').progId;

    // 2. Packets. 3. User space. 4. The old state.
    const switching = performance.now();
    native().linkUpdate(link.fd, prog);
    native().renameExchange(temp, location.dir);
    const switched = performance.now();
    try {
      removeStateDir(temp);
    } catch (err) {
      warnings.push(`the new state serves; the old ABI ${fromAbi} state left at ${temp} could not be removed (${(err as Error).message}); the next load removes it`);
    }
    return {
      migration: {
        fromAbi,
        toAbi: ABI_VERSION,
        bindings: built.bindingCount,
        previousProgramId,
        programId: native().objInfo(prog, 'prog').id,
        reused,
        created,
        buildMs: built_ - started,
        loadMs: loaded - built_,
        switchMs: switched - switching,
      },
      warnings,
    };
  } catch (err) {
    // Before the link update nothing serves from the temporary directory; after it, the exchange is what failed and the next load redoes the job.
    if (fs.existsSync(temp)) {
      try {
        removeStateDir(temp);
      } catch {
        // the next writer removes it as abandoned
      }
    }
    throw err;
  } finally {
    for (const fd of owned) fd.close();
  }
}
