/**
 * The agents' sessions over WebSocket (the transport's inner half; the
 * HTTPS side, who may connect, is transport.ts): one connection per agent
 * (a new one replaces the old), frames validated by the shared parser, one
 * push in flight per agent (the next waits for its ACK or NACK), dead
 * peers found by ping/pong, a snapshot's fragments written against a
 * deadline (a peer that stops reading gives its slot up), and a slow
 * agent's backlog bounded (a push is skipped while the socket still holds
 * unsent data: the agent gets the newest state later, not every state).
 *
 * It does not import the publisher (publisher.ts) nor the rollout's
 * judgement: what to push, and what an answer means, it asks of its owner
 * (SessionHooks); the owner pushes through pushWhere() and pushNacked().
 */
import { EventEmitter } from 'node:events';
import { WebSocket } from 'ws';
import { SNAPSHOT_GZIP, gzipFrame } from '../protocol/compress.js';
import { encodeFrame, parseFrame, type Ack, type Delta, type Frame, type Hello, type Nack, type NackCode, type Snapshot } from '../protocol/messages.js';

/** What the sessions take of ServerOptions (documented there). */
export interface SessionOptions {
  /** The largest frame an agent may send (default MAX_AGENT_FRAME_BYTES). */
  maxFrameBytes?: number;
  /** A snapshot fragment not written within this many ms ends its connection (default WRITE_DEADLINE_MS). */
  writeDeadlineMs?: number;
  pingMs?: number;
  /** Snapshots sent at once (default 32); the other agents wait their turn. */
  snapshotConcurrency?: number;
}

export interface AgentStatus {
  agentId: string;
  connected: boolean;
  applied: { epoch: string; version: number; digest: string } | null;
  lastNack: Pick<Nack, 'version' | 'code' | 'message'> | null;
  lastHeartbeat: number | null;
  /** Bindings the agent overrides locally (from its heartbeats). */
  localOverrides: number;
  inFlight: number | null;
}

/** An agent whose hello was registered, as its owner sees it. */
export interface AgentSession {
  readonly status: AgentStatus;
  /** Its hello, as its answers since have updated it (what it has, what it refuses). */
  readonly hello: Hello;
}

/** What the sessions ask of their owner: they know the agents, not the versions. */
export interface SessionHooks {
  /** What to push to an agent whose hello says `hello` (history.frameFor, with the override and its rollout stage's target), or nothing. */
  frameFor(hello: Hello): Frame | undefined;
  /** A snapshot's text (history.snapshotText): encoded here once per version and override. */
  snapshotText(frame: Snapshot): string;
  /**
   * An ACK or NACK, once the agent's status says it and `ack`/`nack` is
   * emitted, before its next push: `judged` is the version it is about (a
   * NACK that names none is about the push in flight).
   */
  answered(agent: AgentSession, frame: Ack | Nack, judged: number | null): void;
  /** A heartbeat's counters, timed on the monotonic clock. */
  heartbeat(agentId: string, counters: { misses: number; errors: number; at: number }): void;
}

interface Peer extends AgentSession {
  socket: WebSocket;
  hello: Hello;
  alive: boolean;
  /** A push was held back by unsent data: made when the socket has written it (or by the retry timer). */
  held: NodeJS.Timeout | undefined;
  /** One of the SNAPSHOT_CONCURRENCY snapshot sends is this agent's. */
  sendingSnapshot: boolean;
  /**
   * The last version NACKed on this connection: not pushed again on it. A
   * new connection starts afresh (its hello says what the agent refuses by
   * itself: a version that killed it): an agent restarts exactly when a
   * transient failure has cleared.
   */
  nacked: { version: number; code: NackCode } | null;
  /** Ends the connection when the snapshot fragment being written is not written in time. */
  deadline: NodeJS.Timeout | undefined;
}

/** How long a held-back push waits when no write completion brings it sooner. */
const HELD_RETRY_MS = 100;
/** Encoded deltas kept (see deltaBytes). */
const ENCODED_DELTAS = 16;
/** Snapshots being sent at once (see pushTo). */
const SNAPSHOT_CONCURRENCY = 32;
/** A snapshot goes out in pieces of this size (see sendInFragments). */
const FRAGMENT_BYTES = 64 * 1024;
/**
 * A snapshot fragment not handed to the kernel within this long ends its
 * connection. The kernel takes megabytes for a peer before a write waits
 * (3.8 MB measured on loopback for a peer that had stopped reading), so a
 * 64 KiB fragment still waiting after 5 s means the peer has not read
 * 64 KiB in 5 s (under ~100 kbit/s): it is not reading, and it must not
 * keep one of the SNAPSHOT_CONCURRENCY slots the other agents wait for
 * (40 such clients held them until their pings timed out, 10-20 s; a real
 * agent waited 7.5-15.7 s for its snapshot behind them).
 */
const WRITE_DEADLINE_MS = 5000;
/**
 * The largest frame an agent may send. Agents send hello, ack, nack and
 * heartbeat: a hello is at most ~11 KB (32 rollout labels of 64+64
 * characters, a few strings of at most 256), the others a few hundred
 * bytes plus a NACK's message and its few details. 64 KiB is several times
 * the largest; anything bigger is refused by ws from the frame's header
 * (close 1009) before its payload is read, so an authenticated agent
 * cannot make the control plane buffer up to 256 MiB (one 64 MiB frame
 * took it from 80 to 265 MB RSS).
 */
export const MAX_AGENT_FRAME_BYTES = 64 * 1024;

/**
 * Events: `ack` (agentId, version) and `nack` (agentId, { version, code,
 * message }), as the answers arrive; `stalled` (agentId, why): a
 * connection ended by the write deadline.
 */
export class AgentSessions extends EventEmitter {
  /** Agents whose hello was registered: their session. */
  private readonly peers = new Map<string, Peer>();
  /** Per agent, its one open connection (with or without a hello yet). */
  private readonly connections = new Map<string, WebSocket>();
  private readonly statuses = new Map<string, AgentStatus>();
  private pinger: NodeJS.Timeout | undefined;
  private encodedSnapshot: { key: string; bytes: Buffer; gzip?: Buffer; compressing?: boolean; failed?: boolean } | undefined;
  private readonly encodedDeltas = new Map<string, Buffer>();
  /** Agents due a compressed snapshot while it is being compressed. */
  private readonly waitingForGzip = new Set<Peer>();
  private snapshotsSending = 0;
  /** Agents due a snapshot while SNAPSHOT_CONCURRENCY are on their way (in arrival order). */
  private readonly waitingForSnapshot = new Set<Peer>();

  constructor(
    private readonly options: SessionOptions,
    private readonly hooks: SessionHooks,
  ) {
    super();
  }

  /** Dead peers looked for from now on (listening). */
  startPinging(): void {
    this.pinger = setInterval(() => this.ping(), this.options.pingMs ?? 10_000);
    this.pinger.unref();
  }

  /** Every connection ended, and no more pings. */
  close(): void {
    clearInterval(this.pinger);
    for (const socket of this.connections.values()) socket.terminate();
  }

  status(): AgentStatus[] {
    return [...this.statuses.values()];
  }

  /** The agents whose hello was registered. */
  agents(): IterableIterator<AgentSession> {
    return this.peers.values();
  }

  /** Their ids. */
  agentIds(): string[] {
    return [...this.peers.keys()];
  }

  /** Each registered agent that `pick` chooses gets its next push (if it is due one, and none is in flight). */
  pushWhere(pick: (agent: AgentSession) => boolean): void {
    for (const peer of this.peers.values()) if (pick(peer)) this.pushTo(peer);
  }

  /**
   * The agents whose connection NACKed `version` with `code`: that refusal
   * forgotten (their status too), and the version pushed again. Their ids.
   */
  pushNacked(version: number, code: NackCode): string[] {
    const pushed: string[] = [];
    for (const peer of this.peers.values()) {
      if (peer.nacked?.version === version && peer.nacked.code === code) {
        peer.nacked = null;
        peer.status.lastNack = null;
        pushed.push(peer.status.agentId);
        this.pushTo(peer);
      }
    }
    return pushed;
  }

  /** An authenticated connection of `agentId` (its token said so). */
  accept(agentId: string, socket: WebSocket): void {
    // One connection per agent: a new one replaces the old at once (before
    // its hello), and the old one's place in the snapshot queue and its
    // slot are given up now, not when its close event comes: one token
    // never holds more than one connection's worth of slots.
    const previous = this.connections.get(agentId);
    this.connections.set(agentId, socket);
    if (previous) {
      const old = this.peers.get(agentId);
      if (old?.socket === previous) this.drop(old);
      previous.terminate();
    }
    // Known from now on (GET /status lists it), connected only once its hello is registered.
    const status = this.statuses.get(agentId) ?? { agentId, connected: false, applied: null, lastNack: null, lastHeartbeat: null, inFlight: null, localOverrides: 0 };
    this.statuses.set(agentId, status);
    let peer: Peer | undefined;
    socket.on('pong', () => {
      if (peer) peer.alive = true;
    });
    socket.on('close', () => {
      if (this.connections.get(agentId) === socket) this.connections.delete(agentId);
      if (peer) this.drop(peer);
    });
    /** A protocol violation: the session ends now (not when the peer answers the close, if ever). */
    const refuse = (reason: string) => {
      if (peer) this.drop(peer);
      socket.close(1008, reason);
    };
    // ws closes the connection itself on a protocol error (1009 for a frame
    // over maxPayload, sent before 'error'): terminating here would cut
    // that close frame off. Anything else ends the connection.
    socket.on('error', () => {
      if (peer) this.drop(peer);
      if (socket.readyState === WebSocket.OPEN) socket.terminate();
    });
    socket.on('message', (data) => {
      // Replaced meanwhile, or closing (what comes after our close frame is not heard).
      if (this.connections.get(agentId) !== socket || socket.readyState !== WebSocket.OPEN) return;
      let frame: Frame;
      try {
        frame = parseFrame(data.toString(), this.options.maxFrameBytes ?? MAX_AGENT_FRAME_BYTES);
      } catch {
        refuse('invalid frame');
        return;
      }
      if (frame.type === 'hello') {
        if (frame.agent_id !== agentId) {
          refuse('agent id does not match its token');
          return;
        }
        if (peer) {
          refuse('one hello per connection');
          return;
        }
        status.connected = true;
        status.inFlight = null;
        status.applied = frame.have;
        peer = { socket, hello: frame, status, alive: true, held: undefined, sendingSnapshot: false, nacked: null, deadline: undefined };
        this.peers.set(agentId, peer);
        this.pushTo(peer);
        return;
      }
      if (!peer) return;
      if (frame.type === 'ack' || frame.type === 'nack') {
        let judged: number | null = frame.version;
        if (frame.type === 'ack') {
          status.applied = { epoch: frame.epoch, version: frame.version, digest: frame.digest };
          peer.hello = { ...peer.hello, have: status.applied };
        } else {
          // A push the agent could not read names no version: it is the one in flight.
          const version = frame.version ?? status.inFlight;
          judged = version;
          status.lastNack = { version, code: frame.code, message: frame.message };
          if (version !== null) peer.nacked = { version, code: frame.code };
          if (frame.code === 'EREFUSED' && frame.epoch !== null && frame.version !== null) peer.hello = { ...peer.hello, refused: { epoch: frame.epoch, version: frame.version } };
        }
        status.inFlight = null;
        if (frame.type === 'ack') this.emit('ack', agentId, frame.version);
        else this.emit('nack', agentId, status.lastNack);
        this.hooks.answered(peer, frame, judged);
        // A NACK for a gap or a digest mismatch is answered with a snapshot next.
        if (frame.type === 'nack' && (frame.code === 'EGAP' || frame.code === 'EDIGEST')) peer.hello = { ...peer.hello, have: null };
        // After an ACK only a newer version is worth a frame (the agent knows it is up to date).
        if (frame.type === 'ack' || frame.code === 'EGAP' || frame.code === 'EDIGEST') this.pushTo(peer, frame.type === 'ack');
        return;
      }
      if (frame.type === 'heartbeat') {
        status.lastHeartbeat = Date.now();
        status.localOverrides = frame.local_overrides ?? 0;
        status.applied = { epoch: frame.epoch, version: frame.version, digest: frame.digest };
        if (frame.misses !== undefined && frame.errors !== undefined) this.hooks.heartbeat(agentId, { misses: frame.misses, errors: frame.errors, at: performance.now() });
      }
    });
  }

  /**
   * A connection's end (closed, replaced, or stalled): its timers, its place
   * in the snapshot queue and its slot (the next agent's turn), and, if it
   * is the agent's registered session, the agent is disconnected. Idempotent.
   */
  private drop(peer: Peer): void {
    clearTimeout(peer.held);
    peer.held = undefined;
    clearTimeout(peer.deadline);
    peer.deadline = undefined;
    this.waitingForSnapshot.delete(peer);
    this.waitingForGzip.delete(peer);
    this.snapshotSent(peer);
    if (this.peers.get(peer.status.agentId) === peer) {
      this.peers.delete(peer.status.agentId);
      peer.status.connected = false;
      peer.status.inFlight = null;
    }
  }

  /** `answered`: right after the agent's ACK, when "up to date" would tell it nothing. */
  private pushTo(peer: Peer, answered = false): void {
    if (peer.status.inFlight !== null) return; // one push in flight; the ACK brings the next
    if (peer.socket.bufferedAmount > 0) {
      // A slow agent: no queue grows here. The push is made once what is
      // queued has been written (send's callback), or on a timer, never lost.
      peer.held ??= setTimeout(() => this.release(peer), HELD_RETRY_MS);
      return;
    }
    const frame = this.hooks.frameFor(peer.hello);
    if (!frame || (frame.type !== 'snapshot' && frame.type !== 'delta')) {
      if (frame && !(answered && frame.type === 'up-to-date')) this.send(peer, encodeFrame(frame));
      return;
    }
    if (peer.nacked?.version === frame.version && peer.nacked.code !== 'EGAP' && peer.nacked.code !== 'EDIGEST') {
      return; // refused on this connection: not again on it until there is a newer version
    }
    if (frame.type === 'snapshot') {
      const payload = this.snapshotBytes(frame, peer.hello.capabilities.includes(SNAPSHOT_GZIP));
      if (!payload) {
        this.waitingForGzip.add(peer);
        return;
      }
      // At most so many snapshots on their way at once: each one's TLS
      // records are made as it is written (megabytes per agent), so two
      // thousand agents reconnecting must not all be sent to together.
      if (this.snapshotsSending >= (this.options.snapshotConcurrency ?? SNAPSHOT_CONCURRENCY)) {
        this.waitingForSnapshot.add(peer);
        return;
      }
      this.waitingForSnapshot.delete(peer);
      this.snapshotsSending++;
      peer.sendingSnapshot = true;
      peer.status.inFlight = frame.version;
      this.sendInFragments(peer, payload, () => this.snapshotSent(peer));
      return;
    }
    peer.status.inFlight = frame.version;
    this.send(peer, this.deltaBytes(frame));
  }

  /** A delta from one version to another is the same bytes for every agent that has the first: encoded once. */
  private deltaBytes(frame: Delta): Buffer {
    const key = `${frame.epoch} ${frame.from_version} ${frame.version} ${frame.override ? 'override' : ''}`;
    let bytes = this.encodedDeltas.get(key);
    if (!bytes) {
      bytes = Buffer.from(encodeFrame(frame), 'utf8');
      this.encodedDeltas.set(key, bytes);
      // The few latest: agents are one or two versions behind, or get a snapshot.
      if (this.encodedDeltas.size > ENCODED_DELTAS) this.encodedDeltas.delete(this.encodedDeltas.keys().next().value!);
    }
    return bytes;
  }

  /** A snapshot written out (or its agent gone): the next waiting agent's turn. Once per send. */
  private snapshotSent(peer: Peer): void {
    if (!peer.sendingSnapshot) return;
    peer.sendingSnapshot = false;
    this.snapshotsSending--;
    const next = this.waitingForSnapshot.values().next();
    if (!next.done) {
      this.waitingForSnapshot.delete(next.value);
      this.release(next.value);
    }
  }

  /**
   * A big frame as WebSocket fragments, each written once the one before it
   * has been: TLS encrypts what it is given at once and keeps the buffer it
   * grew for as long as the connection lives (measured: a 7 MB snapshot
   * written in one piece left 7 MB of resident memory per agent, 817 MB
   * for 100; in 64 KiB fragments 2,000 agents peaked at 310 MB, and the
   * snapshot reached them sooner), so this bounds what each agent costs. Nothing else is sent to
   * the agent meanwhile (its push is in flight), pings aside, which the
   * protocol allows between fragments. A fragment not written within the
   * write deadline ends the connection: a peer that is not reading gives
   * its slot up to the agents waiting for one.
   */
  private sendInFragments(peer: Peer, { bytes, binary }: { bytes: Buffer; binary: boolean }, done: () => void): void {
    let offset = 0;
    const deadlineMs = this.options.writeDeadlineMs ?? WRITE_DEADLINE_MS;
    const stalled = () => {
      this.emit('stalled', peer.status.agentId, `a snapshot fragment was not written within ${deadlineMs} ms (the agent is not reading); connection ended`);
      this.drop(peer);
      peer.socket.terminate();
    };
    const next = () => {
      if (peer.socket.readyState !== WebSocket.OPEN) return done();
      const end = Math.min(offset + FRAGMENT_BYTES, bytes.length);
      const fragment = bytes.subarray(offset, end);
      offset = end;
      // One timer per snapshot, re-armed per fragment.
      if (peer.deadline) peer.deadline.refresh();
      else peer.deadline = setTimeout(stalled, deadlineMs);
      peer.socket.send(fragment, { binary, fin: end === bytes.length }, (err) => {
        if (err || end === bytes.length) {
          clearTimeout(peer.deadline);
          peer.deadline = undefined;
          done();
        } else next();
      });
    };
    next();
  }

  private send(peer: Peer, data: string | Buffer, written?: () => void): void {
    // A Buffer goes out as a text frame too: a snapshot is encoded once for every agent.
    peer.socket.send(data, { binary: false }, () => {
      written?.();
      if (peer.held && peer.socket.bufferedAmount === 0) this.release(peer);
    });
  }

  private release(peer: Peer): void {
    clearTimeout(peer.held);
    peer.held = undefined;
    if (this.peers.get(peer.status.agentId) === peer && peer.socket.readyState === WebSocket.OPEN) this.pushTo(peer);
  }

  /**
   * A snapshot is the same bytes for every agent: encoded once per version
   * (and override), and compressed once for the agents that ask for it
   * (SNAPSHOT_GZIP: a binary frame). null while that is being made (off
   * the event loop): the agent waits and is released when it is done; if
   * compressing fails, it gets the text.
   */
  private snapshotBytes(frame: Snapshot, gzip: boolean): { bytes: Buffer; binary: boolean } | null {
    const key = `${frame.epoch} ${frame.version} ${frame.override ? 'override' : ''}`;
    if (this.encodedSnapshot?.key !== key) this.encodedSnapshot = { key, bytes: Buffer.from(this.hooks.snapshotText(frame), 'utf8') };
    const e = this.encodedSnapshot;
    if (!gzip || e.failed) return { bytes: e.bytes, binary: false };
    if (e.gzip) return { bytes: e.gzip, binary: true };
    if (!e.compressing) {
      e.compressing = true;
      gzipFrame(e.bytes)
        .then(
          (gz) => void (e.gzip = gz),
          () => void (e.failed = true),
        )
        .finally(() => {
          e.compressing = false;
          const waiting = [...this.waitingForGzip];
          this.waitingForGzip.clear();
          for (const p of waiting) this.release(p);
        });
    }
    return null;
  }

  private ping(): void {
    for (const peer of this.peers.values()) {
      if (!peer.alive) {
        peer.socket.terminate();
        continue;
      }
      peer.alive = false;
      peer.socket.ping();
    }
  }
}
