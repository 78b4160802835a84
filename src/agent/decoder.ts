/**
 * A large push parsed, validated (and a snapshot indexed) on a thread of its own
 * (worker_threads), so the agent's event loop keeps turning while it is: at
 * a million bindings the JSON alone is tens of megabytes and a second of
 * parsing, and heartbeats, pings and the watchdog wait on that loop. The
 * frame's bytes are transferred in (not copied) and back (the agent keeps
 * them as its last known good state); the index comes back as transferred
 * columns (IndexedState.toParts). `PushDecoder` is the agent's side; this
 * module is also the worker's script.
 */
import type { SwitchyardError } from '../errors.js';
import { RequestThread, fromWire, serveRequests, toWire } from '../thread.js';
import { parseFrame, type Delta, type Frame, type Snapshot } from '../protocol/messages.js';
import { gunzipFrame, isGzip } from '../protocol/compress.js';
import { BindingTable, type BindingColumnsTransfer } from '../bindings/binding.js';
import { parseDesiredState } from '../desired/state.js';
import { IndexedState, parseDelta, type IndexedParts, type ParsedDelta } from '../protocol/state.js';

/** A frame at least this large (bytes) is decoded on the worker. */
export const DECODE_OFF_THREAD_BYTES = 256 * 1024;

type DeltaHead = Omit<Delta, 'add' | 'remove'>;
type SnapshotHead = Omit<Snapshot, 'state'>;

export type Decoded =
  /** Neither a snapshot nor a delta: as parseFrame gives it. */
  | { kind: 'frame'; frame: Frame; bytes: Buffer }
  /** A snapshot: the frame without its state, and the state indexed. */
  | { kind: 'snapshot'; frame: SnapshotHead; indexed: IndexedState; bytes: Buffer }
  /** A delta: the frame without its lists, and the lists parsed (applyParsed makes it). */
  | { kind: 'delta'; frame: DeltaHead; parsed: ParsedDelta; bytes: Buffer }
  /** A valid frame whose content is not (a bad binding, say): why, for the NACK of its version to name. */
  | { kind: 'invalid'; frame: SnapshotHead | DeltaHead; error: SwitchyardError; bytes: Buffer };

type Reply =
  | { kind: 'frame'; frame: Frame; bytes: Uint8Array }
  | { kind: 'snapshot'; frame: SnapshotHead; parts: IndexedParts; bytes: Uint8Array }
  | { kind: 'delta'; frame: DeltaHead; added: BindingColumnsTransfer; removed: BindingColumnsTransfer; bytes: Uint8Array }
  | { kind: 'invalid'; frame: SnapshotHead | DeltaHead; error: ReturnType<typeof toWire>; bytes: Uint8Array }
  | { kind: 'error'; error: ReturnType<typeof toWire>; bytes: Uint8Array };

interface Job {
  bytes: Uint8Array;
  maxFrameBytes?: number;
}

/** The work itself, on whichever thread runs it. */
function decode(received: Uint8Array, maxFrameBytes: number | undefined): Reply {
  let frame: Frame;
  let bytes = received;
  try {
    // A compressed snapshot (SNAPSHOT_GZIP): its text from here on, also as the agent keeps it.
    if (isGzip(received)) bytes = owned(gunzipFrame(received, maxFrameBytes));
    frame = parseFrame(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'), maxFrameBytes);
  } catch (err) {
    return { kind: 'error', error: toWire(err), bytes: received };
  }
  if (frame.type === 'delta') {
    const { add, remove, ...head } = frame;
    try {
      const parsed = parseDelta({ add: add as never, remove }, `delta ${frame.version}`);
      return { kind: 'delta', frame: head, added: parsed.added.toColumns(), removed: parsed.removed.toColumns(), bytes };
    } catch (err) {
      return { kind: 'invalid', frame: head, error: toWire(err), bytes };
    }
  }
  if (frame.type !== 'snapshot') return { kind: 'frame', frame, bytes };
  const { state, ...head } = frame;
  try {
    const indexed = IndexedState.of(parseDesiredState(state, `snapshot ${frame.version}`));
    return { kind: 'snapshot', frame: head, parts: indexed.toParts(), bytes };
  } catch (err) {
    return { kind: 'invalid', frame: head, error: toWire(err), bytes };
  }
}

const columnBuffers = (c: BindingColumnsTransfer) => [c.labelIndex, c.family, c.protocol, c.prefixLen, c.port, c.addr].map((a) => a.buffer as ArrayBuffer);

serveRequests<Job, Reply>((job) => {
  const reply = decode(job.bytes, job.maxFrameBytes);
  const transfer: ArrayBuffer[] = [reply.bytes.buffer as ArrayBuffer];
  if (reply.kind === 'snapshot') transfer.push(...IndexedState.transferList(reply.parts));
  if (reply.kind === 'delta') transfer.push(...columnBuffers(reply.added), ...columnBuffers(reply.removed));
  return { reply, transfer };
});

export class PushDecoder {
  private readonly thread = new RequestThread<Job, Reply>(import.meta.url, 'push decoder failed');

  /** Decodes a frame's bytes (which it takes: they come back in the result). Throws what parseFrame throws for an invalid frame. */
  async decode(bytes: Buffer, maxFrameBytes?: number): Promise<Decoded> {
    const job: Job = { bytes: owned(bytes), ...(maxFrameBytes !== undefined ? { maxFrameBytes } : {}) };
    const reply = this.thread.available ? await this.thread.request(job, [job.bytes.buffer as ArrayBuffer]) : decode(job.bytes, maxFrameBytes);
    const back = Buffer.from(reply.bytes.buffer, reply.bytes.byteOffset, reply.bytes.byteLength);
    switch (reply.kind) {
      case 'error':
        throw fromWire(reply.error, 'push decoder failed');
      case 'frame':
        return { kind: 'frame', frame: reply.frame, bytes: back };
      case 'snapshot':
        return { kind: 'snapshot', frame: reply.frame, indexed: IndexedState.fromParts(reply.parts), bytes: back };
      case 'delta':
        return { kind: 'delta', frame: reply.frame, parsed: { added: BindingTable.fromColumns(reply.added), removed: BindingTable.fromColumns(reply.removed) }, bytes: back };
      case 'invalid':
        return { kind: 'invalid', frame: reply.frame, error: fromWire(reply.error, 'push decoder failed') as SwitchyardError, bytes: back };
    }
  }

  close(): void {
    this.thread.close();
  }
}

/** The bytes in an ArrayBuffer of their own (a Buffer may be a view into a shared pool), so it can be transferred. */
function owned(bytes: Uint8Array): Uint8Array {
  if (bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && !(bytes.buffer instanceof SharedArrayBuffer)) return new Uint8Array(bytes.buffer, 0, bytes.byteLength);
  return new Uint8Array(bytes);
}
