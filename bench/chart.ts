/**
 * The README's chart (bench/results/traffic.svg): real traffic, spread over
 * the bindings; per set and size, ns per datagram of ours, tubular and the
 * assign-only program (what any sk_lookup dispatcher pays), as horizontal
 * bars on one linear scale, each with its figure.
 */
import type { TrafficRow } from './rows.js';

const W = 760;
const BAR = 13;
const GAP = 16;
const M = { left: 150, right: 60, top: 58, bottom: 36 };
const SERIES: Array<{ name: string; color: string; pick: (r: TrafficRow) => number }> = [
  { name: 'Switchyard', color: '#1f77b4', pick: (r) => r.ours_ns },
  { name: 'tubular (LPM trie)', color: '#d62728', pick: (r) => r.tubular_ns },
  { name: 'assign only (no lookup)', color: '#7f7f7f', pick: (r) => r.assign_ns },
];

const size = (n: number) => (n >= 1e6 && n % 1e6 === 0 ? `${n / 1e6}M` : n >= 1e3 && n % 1e3 === 0 ? `${n / 1e3}K` : String(n));
const family = (r: TrafficRow) => (r.family === 'dual' ? 'IPv4+6' : `IPv${r.family}`);

/** A round step (1, 2 or 5 × 10^k) giving about five gridlines up to `max`. */
function step(max: number): number {
  const raw = max / 5;
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw)!;
}

export function chart(rows: TrafficRow[]): string {
  const shown = rows.filter((r) => r.kind === 'spread');
  const group = SERIES.length * BAR + GAP;
  const H = M.top + Math.max(1, shown.length) * group + M.bottom;
  const max = Math.max(1, ...shown.flatMap((r) => SERIES.map((s) => s.pick(r))));
  const tick = step(max);
  const top = Math.ceil(max / tick) * tick;
  const px = (v: number) => M.left + (Math.max(0, v) / top) * (W - M.left - M.right);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${M.left}" y="18" font-size="14">ns per datagram, real UDP traffic through sk_lookup (spread over the bindings)</text>`,
    `<text x="${M.left}" y="34" fill="#555">kernel run-time stats, net of an empty program; median of the rounds</text>`,
  ];
  SERIES.forEach((s, i) => {
    const x = M.left + i * 190;
    out.push(`<rect x="${x}" y="${M.top - 16}" width="12" height="10" fill="${s.color}"/>`, `<text x="${x + 16}" y="${M.top - 7}">${s.name}</text>`);
  });
  for (let v = 0; v <= top; v += tick) {
    const x = px(v).toFixed(1);
    out.push(`<line x1="${x}" y1="${M.top}" x2="${x}" y2="${H - M.bottom}" stroke="#eee"/>`, `<text x="${x}" y="${H - M.bottom + 16}" text-anchor="middle">${v}</text>`);
  }
  out.push(`<text x="${(W - M.right + M.left) / 2}" y="${H - 4}" text-anchor="middle">ns per datagram</text>`);
  shown.forEach((r, g) => {
    const y0 = M.top + g * group;
    out.push(`<text x="${M.left - 8}" y="${y0 + (SERIES.length * BAR) / 2 + 4}" text-anchor="end">${r.set} ${size(r.bindings)} (${family(r)})</text>`);
    SERIES.forEach((s, i) => {
      const v = s.pick(r);
      const y = y0 + i * BAR;
      out.push(
        `<rect x="${M.left}" y="${y}" width="${(px(v) - M.left).toFixed(1)}" height="${BAR - 2}" fill="${s.color}"/>`,
        `<text x="${(px(v) + 4).toFixed(1)}" y="${y + BAR - 3}" font-size="10">${Math.round(v)}</text>`,
      );
    });
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
