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
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { SwitchyardError, type ErrorCode } from '../errors.js';
import { parseFrame, type Delta, type Frame, type Snapshot } from '../protocol/messages.js';
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
  | { kind: 'invalid'; frame: SnapshotHead | DeltaHead; error: WireError; bytes: Uint8Array }
  | { kind: 'error'; error: WireError; bytes: Uint8Array };

interface WireError {
  message: string;
  code?: string;
  entry?: string;
}

const toWire = (err: unknown): WireError => ({ message: (err as Error).message, code: (err as SwitchyardError).code, ...((err as SwitchyardError).entry !== undefined ? { entry: (err as SwitchyardError).entry } : {}) });
const fromWire = (e: WireError): Error =>
  e.code ? new SwitchyardError(e.code as ErrorCode, e.message, e.entry === undefined ? {} : { entry: e.entry }) : new Error(e.message);

/** The work itself, on whichever thread runs it. */
function decode(bytes: Uint8Array, maxFrameBytes: number | undefined): Reply {
  let frame: Frame;
  try {
    frame = parseFrame(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'), maxFrameBytes);
  } catch (err) {
    return { kind: 'error', error: toWire(err), bytes };
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

if (!isMainThread && parentPort) {
  const port = parentPort;
  port.on('message', (job: { id: number; bytes: Uint8Array; maxFrameBytes?: number }) => {
    let reply: Reply;
    try {
      reply = decode(job.bytes, job.maxFrameBytes);
    } catch (err) {
      reply = { kind: 'error', error: toWire(err), bytes: job.bytes };
    }
    const transfer: ArrayBuffer[] = [reply.bytes.buffer as ArrayBuffer];
    if (reply.kind === 'snapshot') transfer.push(...IndexedState.transferList(reply.parts));
    if (reply.kind === 'delta') transfer.push(...columnBuffers(reply.added), ...columnBuffers(reply.removed));
    port.postMessage({ id: job.id, reply }, transfer);
  });
}

export class PushDecoder {
  private worker: Worker | undefined;
  private next = 1;
  private readonly pending = new Map<number, { resolve: (r: Reply) => void; reject: (e: Error) => void }>();

  /** The worker script next to this module (the compiled .js); from TypeScript sources (tests), decoded on this thread. */
  static available(): boolean {
    return fileURLToPath(import.meta.url).endsWith('.js') && fs.existsSync(fileURLToPath(import.meta.url));
  }

  /** Decodes a frame's bytes (which it takes: they come back in the result). Throws what parseFrame throws for an invalid frame. */
  async decode(bytes: Buffer, maxFrameBytes?: number): Promise<Decoded> {
    const reply = PushDecoder.available() ? await this.onWorker(owned(bytes), maxFrameBytes) : decode(bytes, maxFrameBytes);
    const back = Buffer.from(reply.bytes.buffer, reply.bytes.byteOffset, reply.bytes.byteLength);
    switch (reply.kind) {
      case 'error':
        throw fromWire(reply.error);
      case 'frame':
        return { kind: 'frame', frame: reply.frame, bytes: back };
      case 'snapshot':
        return { kind: 'snapshot', frame: reply.frame, indexed: IndexedState.fromParts(reply.parts), bytes: back };
      case 'delta':
        return { kind: 'delta', frame: reply.frame, parsed: { added: BindingTable.fromColumns(reply.added), removed: BindingTable.fromColumns(reply.removed) }, bytes: back };
      case 'invalid':
        return { kind: 'invalid', frame: reply.frame, error: fromWire(reply.error) as SwitchyardError, bytes: back };
    }
  }

  private onWorker(bytes: Uint8Array, maxFrameBytes: number | undefined): Promise<Reply> {
    if (!this.worker) {
      const worker = new Worker(fileURLToPath(import.meta.url));
      worker.unref(); // an idle decoder never keeps the agent alive
      worker.on('message', (m: { id: number; reply: Reply }) => {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        p?.resolve(m.reply);
      });
      worker.on('error', (err) => this.fail(err));
      worker.on('exit', (code) => this.fail(new Error(`push decoder thread exited (${code})`)));
      this.worker = worker;
    }
    const id = this.next++;
    const worker = this.worker;
    return new Promise<Reply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ id, bytes, ...(maxFrameBytes !== undefined ? { maxFrameBytes } : {}) }, [bytes.buffer as ArrayBuffer]);
    });
  }

  private fail(err: Error): void {
    this.worker = undefined;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  close(): void {
    void this.worker?.terminate();
    this.worker = undefined;
  }
}

/** The bytes in an ArrayBuffer of their own (a Buffer may be a view into a shared pool), so it can be transferred. */
function owned(bytes: Buffer): Uint8Array {
  if (bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && !(bytes.buffer instanceof SharedArrayBuffer)) return new Uint8Array(bytes.buffer, 0, bytes.byteLength);
  return new Uint8Array(bytes);
}
