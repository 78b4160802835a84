/**
 * The agent's Prometheus metrics (prom-client), served on a configurable
 * address at GET /metrics. What the kernel counts (lookups, misses and
 * errors per destination, from the BPF program's per-CPU counters) and what
 * the agent holds (bindings per label, the applied version and its age,
 * the control-plane connection) are read at scrape time; what happens
 * (applies, NACKs, firewall repairs) is counted as it happens.
 *
 * The BPF counters are exported as counters holding the kernel's totals: a
 * destination released and reused starts again from zero, which
 * Prometheus's rate() reads as a counter reset.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { SwitchyardError } from '../errors.js';
import type { DestinationStats } from '../dispatcher/destinations.js';

export interface MetricSources {
  /** Per destination: label, family, protocol and the program's counters. */
  counters(): Array<{ label: string; family: number; protocol: string; stats: DestinationStats }>;
  /** Bindings per label in the applied state. */
  bindingsPerLabel(): ReadonlyMap<string, number>;
  applied(): { version: number; ackedAt: number } | undefined;
  connected(): boolean;
}

export class AgentMetrics {
  readonly registry = new Registry();
  readonly applyDuration: Histogram<'kind'>;
  readonly nacks: Counter<'code'>;
  readonly firewallRepairs: Counter;
  private server: http.Server | undefined;

  constructor(sources: MetricSources) {
    const registers = [this.registry];
    const kernelCounter = (name: string, help: string, pick: (s: DestinationStats) => bigint) =>
      new Counter({
        name,
        help,
        labelNames: ['label', 'family', 'protocol'] as const,
        registers,
        collect() {
          this.reset();
          for (const d of sources.counters()) this.inc({ label: d.label, family: `ipv${d.family}`, protocol: d.protocol }, Number(pick(d.stats)));
        },
      });
    kernelCounter('switchyard_lookups_total', 'Packets and connections the sk_lookup program dispatched to a destination (kernel counter).', (s) => s.lookups);
    kernelCounter('switchyard_lookup_misses_total', 'Lookups that matched a binding whose destination had no socket registered (kernel counter).', (s) => s.misses);
    kernelCounter('switchyard_lookup_errors_total', 'Socket assignments the kernel refused (kernel counter).', (s) => s.errors);
    new Gauge({
      name: 'switchyard_bindings',
      help: 'Bindings per label in the applied state.',
      labelNames: ['label'] as const,
      registers,
      collect() {
        this.reset();
        for (const [label, n] of sources.bindingsPerLabel()) this.set({ label }, n);
      },
    });
    new Gauge({
      name: 'switchyard_applied_version',
      help: 'Version of the desired state applied and acknowledged (0: none yet).',
      registers,
      collect() {
        this.set(sources.applied()?.version ?? 0);
      },
    });
    new Gauge({
      name: 'switchyard_applied_age_seconds',
      help: 'Seconds since the applied version was acknowledged (-1: none yet).',
      registers,
      collect() {
        const a = sources.applied();
        this.set(a ? Math.max(0, (Date.now() - a.ackedAt) / 1000) : -1);
      },
    });
    new Gauge({
      name: 'switchyard_control_plane_connected',
      help: '1 while the channel to the control plane is open.',
      registers,
      collect() {
        this.set(sources.connected() ? 1 : 0);
      },
    });
    this.applyDuration = new Histogram({
      name: 'switchyard_apply_duration_seconds',
      help: 'Time from a push received to acknowledged (validation, guards, kernel, persistence), by kind.',
      labelNames: ['kind'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.nacks = new Counter({ name: 'switchyard_nacks_total', help: 'Pushes refused, by reason code.', labelNames: ['code'] as const, registers });
    this.firewallRepairs = new Counter({ name: 'switchyard_firewall_repairs_total', help: 'Periodic firewall resyncs that found drift and repaired it.', registers });
  }

  /** Serves GET /metrics on `listen` ("127.0.0.1:9464", "[::1]:9464"); returns the port. */
  async serve(listen: string): Promise<number> {
    const { host, port } = parseListen(listen);
    this.server = http.createServer((req, res) => {
      if (req.method !== 'GET' || req.url !== '/metrics') {
        res.writeHead(404).end();
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
        (err: Error) => res.writeHead(500).end(`${err.message}\n`),
      );
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(port, host, resolve);
    });
    return (this.server.address() as AddressInfo).port;
  }

  close(): void {
    this.server?.close();
  }
}

/** "host:port" or "[v6]:port". */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(listen);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new SwitchyardError('EINVAL_ARGUMENT', `listen address ${JSON.stringify(listen)} must be host:port or [ipv6]:port`, { entry: listen });
  return { host: m[1] ?? m[2]!, port };
}
