/**
 * The agent's end of the channel: WSS to the control plane with the CA
 * pinned (only servers it signed are trusted) and the agent's bearer
 * token; `hello` on every connection; frames to the session, the session's
 * answers back; heartbeats; a dead server found by ping/pong; reconnection
 * with exponential backoff and jitter (1 s × 1.6 up to 120 s, ±20 %, as
 * gRPC does). The session keeps serving its last known good state while
 * disconnected, for as long as it takes.
 */
import WebSocket from 'ws';
import type { AgentSession } from './session.js';
import { encodeFrame } from '../protocol/messages.js';

export interface ClientOptions {
  /** The control plane, or its replicas: a lost connection moves to the next. */
  urls: string[];
  /** PEM of the CA that signed the control plane's certificate. */
  ca: string;
  token: string;
  heartbeatMs?: number;
  /** A server that does not answer a ping within this is dropped. */
  deadAfterMs?: number;
  maxFrameBytes?: number;
  backoff?: { initialMs: number; factor: number; maxMs: number; jitter: number };
  onEvent?: (event: string, detail?: unknown) => void;
}

const DEFAULT_BACKOFF = { initialMs: 1000, factor: 1.6, maxMs: 120_000, jitter: 0.2 };
/** The pause before trying the next replica (within a round of them). */
const NEXT_REPLICA_MS = 100;

export class ControlPlaneClient {
  private socket: WebSocket | undefined;
  private stopped = false;
  private attempt = 0;
  private timers: NodeJS.Timeout[] = [];
  private retry: NodeJS.Timeout | undefined;
  /** Which of the URLs the current (or next) connection goes to. */
  private at = 0;

  constructor(
    private readonly session: AgentSession,
    private readonly options: ClientOptions,
  ) {}

  /** The URL of the current (or next) connection. */
  get url(): string {
    return this.options.urls[this.at % this.options.urls.length]!;
  }

  get connected(): boolean {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  start(): void {
    this.stopped = false;
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retry);
    this.clearTimers();
    this.socket?.terminate();
  }

  /** The delay before reconnection attempt `n` (0-based). */
  static backoffMs(n: number, b = DEFAULT_BACKOFF, random = Math.random): number {
    const base = Math.min(b.maxMs, b.initialMs * b.factor ** n);
    return Math.round(base * (1 - b.jitter + 2 * b.jitter * random()));
  }

  private clearTimers(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
  }

  private connect(): void {
    const event = this.options.onEvent ?? (() => {});
    const socket = new WebSocket(this.url, {
      ca: this.options.ca,
      headers: { authorization: `Bearer ${this.options.token}` },
      maxPayload: this.options.maxFrameBytes ?? 256 * 1024 * 1024,
      handshakeTimeout: 10_000,
    });
    this.socket = socket;
    let alive = true;
    socket.on('open', () => {
      this.attempt = 0;
      event('connected');
      socket.send(encodeFrame(this.session.hello()));
      this.timers.push(
        setInterval(() => {
          const beat = this.session.heartbeat();
          if (beat && socket.readyState === WebSocket.OPEN) socket.send(encodeFrame(beat));
        }, this.options.heartbeatMs ?? 10_000),
        setInterval(() => {
          if (!alive) {
            event('dead peer');
            socket.terminate();
            return;
          }
          alive = false;
          socket.ping();
        }, this.options.deadAfterMs ?? 30_000),
      );
    });
    socket.on('pong', () => (alive = true));
    socket.on('ping', () => (alive = true));
    socket.on('message', (data) => {
      alive = true;
      // The bytes as they came: a large snapshot goes to the decoder's thread undecoded.
      void this.session.receive(Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data));
    });
    socket.on('unexpected-response', (_req, res) => {
      event('refused', res.statusCode);
      socket.terminate();
    });
    socket.on('error', (err) => event('error', err.message));
    socket.on('close', () => {
      this.clearTimers();
      if (this.stopped || this.socket !== socket) return;
      // The next replica at once, until each has been tried; then backing off
      // (the hello says what this agent has: a replica of the same store
      // answers up-to-date, nothing is applied again).
      const n = this.options.urls.length;
      this.at = (this.at + 1) % n;
      const tried = this.attempt++;
      const wait = tried + 1 < n ? NEXT_REPLICA_MS : ControlPlaneClient.backoffMs(Math.floor((tried + 1) / n) - 1, this.options.backoff ?? DEFAULT_BACKOFF);
      event('disconnected', { retryInMs: wait, next: this.url });
      this.retry = setTimeout(() => this.connect(), wait);
    });
  }

  /** What the session sends goes out on the socket (wired by the agent). */
  send(text: string): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(text);
  }
}
