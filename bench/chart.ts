/** The README's chart: ns per lookup against bindings, both axes log scale, one line per set and design. */
import type { LookupRow } from './run.js';

const W = 760;
const H = 440;
const M = { left: 70, right: 190, top: 30, bottom: 50 };
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b'];

export function chart(rows: LookupRow[]): string {
  const points = rows.flatMap((r) => [r.ours_ns, r.tubular_ns ?? 0]).filter((v) => v > 0);
  const xs = rows.map((r) => r.bindings);
  const x0 = Math.log10(Math.min(...xs) / 2);
  const x1 = Math.log10(Math.max(...xs) * 2);
  const y0 = Math.log10(Math.max(1, Math.min(...points) / 2));
  const y1 = Math.log10(Math.max(...points) * 2);
  const px = (v: number) => M.left + ((Math.log10(v) - x0) / (x1 - x0)) * (W - M.left - M.right);
  const py = (v: number) => H - M.bottom - ((Math.log10(Math.max(v, 1)) - y0) / (y1 - y0)) * (H - M.top - M.bottom);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${M.left}" y="18" font-size="14">ns per lookup (net of the empty-program floor) against bindings, log-log</text>`,
  ];
  for (let e = Math.ceil(x0); e <= Math.floor(x1); e++) {
    const x = px(10 ** e);
    out.push(`<line x1="${x}" y1="${M.top}" x2="${x}" y2="${H - M.bottom}" stroke="#eee"/>`, `<text x="${x}" y="${H - M.bottom + 16}" text-anchor="middle">1e${e}</text>`);
  }
  for (let e = Math.ceil(y0); e <= Math.floor(y1); e++) {
    const y = py(10 ** e);
    out.push(`<line x1="${M.left}" y1="${y}" x2="${W - M.right}" y2="${y}" stroke="#eee"/>`, `<text x="${M.left - 6}" y="${y + 4}" text-anchor="end">${10 ** e}</text>`);
  }
  out.push(`<text x="${(W - M.right + M.left) / 2}" y="${H - 12}" text-anchor="middle">bindings</text>`);
  const sets = [...new Set(rows.map((r) => r.set))];
  sets.forEach((set, i) => {
    const color = COLORS[i % COLORS.length]!;
    const mine = rows.filter((r) => r.set === set).sort((a, b) => a.bindings - b.bindings);
    const line = (pick: (r: LookupRow) => number | null, dash: string) => {
      const pts = mine.filter((r) => (pick(r) ?? 0) > 0).map((r) => `${px(r.bindings).toFixed(1)},${py(pick(r)!).toFixed(1)}`);
      if (pts.length === 0) return;
      out.push(`<polyline fill="none" stroke="${color}" stroke-width="2" ${dash} points="${pts.join(' ')}"/>`);
      for (const p of pts) out.push(`<circle cx="${p.split(',')[0]}" cy="${p.split(',')[1]}" r="3" fill="${color}"/>`);
    };
    line((r) => r.ours_ns, '');
    line((r) => r.tubular_ns, 'stroke-dasharray="5,4"');
    const y = M.top + 16 + i * 18;
    out.push(`<line x1="${W - M.right + 14}" y1="${y}" x2="${W - M.right + 34}" y2="${y}" stroke="${color}" stroke-width="2"/>`, `<text x="${W - M.right + 40}" y="${y + 4}">${set}</text>`);
  });
  const y = M.top + 16 + sets.length * 18 + 10;
  out.push(
    `<line x1="${W - M.right + 14}" y1="${y}" x2="${W - M.right + 34}" y2="${y}" stroke="black" stroke-width="2"/><text x="${W - M.right + 40}" y="${y + 4}">Switchyard</text>`,
    `<line x1="${W - M.right + 14}" y1="${y + 18}" x2="${W - M.right + 34}" y2="${y + 18}" stroke="black" stroke-width="2" stroke-dasharray="5,4"/><text x="${W - M.right + 40}" y="${y + 22}">tubular (LPM trie)</text>`,
    '</svg>',
  );
  return out.join('\n') + '\n';
}
