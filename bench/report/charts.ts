// Hand-written SVG charts for the benchmark report, in the manner of runtime/train/loss-curve.ts
// (no plotting dependency; the files open in any browser and render on GitHub): grouped horizontal
// bars for ms, GFLOP/s and the like, and a line chart for loss curves.

import { niceTicks } from '../../runtime/train/loss-curve.ts';

const FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"';
export const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];

export function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A tick label with as many decimals as the spacing needs. */
function tickLabel(value: number, ticks: number[]): string {
  const spacing = ticks.length > 1 ? ticks[1] - ticks[0] : 1;
  const decimals = Math.max(0, -Math.floor(Math.log10(spacing) + 1e-9));
  return value.toFixed(decimals);
}

/** A value for a bar's end label: 3 significant digits, no exponent below a million. */
export function shortNumber(v: number): string {
  if (v === 0) return '0';
  if (Math.abs(v) >= 100) return Math.round(v).toLocaleString('en-US');
  return v.toPrecision(3);
}

export interface BarGroup {
  label: string;
  /** One bar per series (same order as `series`); undefined: not measured. */
  values: (number | undefined)[];
}

export interface BarChart {
  title: string;
  /** The value axis, e.g. 'ms per step (lower is better)'. */
  axis: string;
  series: string[];
  groups: BarGroup[];
  /** A dashed vertical line, e.g. the device's peak. */
  reference?: { value: number; label: string };
}

/** Grouped horizontal bars: one group per row (a preset, a shape, a T), one bar per series. */
export function barChartSvg(chart: BarChart): string {
  const width = 860;
  const bar = 14;
  const gap = 10;
  const left = 150;
  const right = 90;
  const top = 56 + Math.ceil(chart.series.length / 4) * 18;
  const groupHeight = chart.series.length * bar + gap;
  const plotHeight = Math.max(groupHeight, chart.groups.length * groupHeight);
  const height = top + plotHeight + 56;
  const values = chart.groups.flatMap((g) => g.values.filter((v): v is number => v !== undefined && Number.isFinite(v)));
  const ticks = niceTicks(0, Math.max(1e-9, ...values, chart.reference?.value ?? 0));
  const max = ticks[ticks.length - 1];
  const plotWidth = width - left - right;
  const x = (v: number) => left + (v / max) * plotWidth;

  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ${FONT} font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="24" text-anchor="middle" font-size="15" font-weight="600">${escapeXml(chart.title)}</text>`,
  ];
  // Legend: four series a row.
  chart.series.forEach((name, i) => {
    const lx = left + (i % 4) * 160;
    const ly = 44 + Math.floor(i / 4) * 18;
    out.push(
      `<rect x="${lx}" y="${ly - 9}" width="12" height="12" fill="${PALETTE[i % PALETTE.length]}"/>`,
      `<text x="${lx + 18}" y="${ly}" dominant-baseline="middle">${escapeXml(name)}</text>`,
    );
  });
  for (const t of ticks) {
    const px = x(t).toFixed(1);
    out.push(
      `<line x1="${px}" y1="${top}" x2="${px}" y2="${top + plotHeight}" stroke="#e5e5e5"/>`,
      `<text x="${px}" y="${top + plotHeight + 16}" text-anchor="middle">${tickLabel(t, ticks)}</text>`,
    );
  }
  chart.groups.forEach((g, gi) => {
    const gy = top + gi * groupHeight + gap / 2;
    out.push(`<text x="${left - 8}" y="${(gy + (chart.series.length * bar) / 2).toFixed(1)}" text-anchor="end" dominant-baseline="middle">${escapeXml(g.label)}</text>`);
    g.values.forEach((v, si) => {
      const by = gy + si * bar;
      if (v === undefined || !Number.isFinite(v)) {
        out.push(`<text x="${left + 4}" y="${by + bar / 2}" dominant-baseline="middle" fill="#888" font-size="10">${escapeXml(chart.series[si])}: not measured</text>`);
        return;
      }
      const w = Math.max(0.5, x(v) - left);
      out.push(
        `<rect x="${left}" y="${by}" width="${w.toFixed(1)}" height="${bar - 2}" fill="${PALETTE[si % PALETTE.length]}"><title>${escapeXml(`${chart.series[si]}, ${g.label}: ${v}`)}</title></rect>`,
        `<text x="${(left + w + 4).toFixed(1)}" y="${by + bar / 2}" dominant-baseline="middle" font-size="10">${shortNumber(v)}</text>`,
      );
    });
  });
  out.push(
    `<line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotHeight}" stroke="#333"/>`,
    `<text x="${left + plotWidth / 2}" y="${top + plotHeight + 40}" text-anchor="middle" font-size="13">${escapeXml(chart.axis)}</text>`,
  );
  if (chart.reference) {
    const px = x(chart.reference.value).toFixed(1);
    out.push(
      `<line x1="${px}" y1="${top}" x2="${px}" y2="${top + plotHeight}" stroke="#d62728" stroke-dasharray="5 4"/>`,
      `<text x="${px}" y="${top - 4}" text-anchor="end" fill="#d62728" font-size="10">${escapeXml(chart.reference.label)}</text>`,
    );
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}

export interface LineSeries {
  label: string;
  points: [number, number][];
}

export interface LineChart {
  title: string;
  xLabel: string;
  yLabel: string;
  series: LineSeries[];
}

/** Lines with a marker at every point (for a few points each, e.g. the first losses of each system). */
export function lineChartSvg(chart: LineChart): string {
  const width = 800;
  const height = 480;
  const plot = { left: 72, right: 170, top: 48, bottom: 64 };
  const pts = chart.series.flatMap((s) => s.points).filter(([a, b]) => Number.isFinite(a) && Number.isFinite(b));
  const xTicks = niceTicks(Math.min(...pts.map(([a]) => a), 0), Math.max(...pts.map(([a]) => a), 1), { integer: true });
  const yTicks = pts.length ? niceTicks(Math.min(...pts.map(([, b]) => b)), Math.max(...pts.map(([, b]) => b))) : niceTicks(0, 1);
  const [x0, x1] = [xTicks[0], xTicks[xTicks.length - 1]];
  const [y0, y1] = [yTicks[0], yTicks[yTicks.length - 1]];
  const pw = width - plot.left - plot.right;
  const ph = height - plot.top - plot.bottom;
  const x = (v: number) => plot.left + ((v - x0) / (x1 - x0)) * pw;
  const y = (v: number) => plot.top + (1 - (v - y0) / (y1 - y0)) * ph;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ${FONT} font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="28" text-anchor="middle" font-size="15" font-weight="600">${escapeXml(chart.title)}</text>`,
  ];
  for (const t of yTicks) {
    const py = y(t).toFixed(1);
    out.push(`<line x1="${plot.left}" y1="${py}" x2="${plot.left + pw}" y2="${py}" stroke="#e5e5e5"/>`, `<text x="${plot.left - 8}" y="${py}" text-anchor="end" dominant-baseline="middle">${tickLabel(t, yTicks)}</text>`);
  }
  for (const t of xTicks) {
    const px = x(t).toFixed(1);
    out.push(`<line x1="${px}" y1="${plot.top}" x2="${px}" y2="${plot.top + ph}" stroke="#e5e5e5"/>`, `<text x="${px}" y="${plot.top + ph + 18}" text-anchor="middle">${tickLabel(t, xTicks)}</text>`);
  }
  out.push(
    `<rect x="${plot.left}" y="${plot.top}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`,
    `<text x="${plot.left + pw / 2}" y="${height - 20}" text-anchor="middle" font-size="13">${escapeXml(chart.xLabel)}</text>`,
    `<text transform="translate(20 ${plot.top + ph / 2}) rotate(-90)" text-anchor="middle" font-size="13">${escapeXml(chart.yLabel)}</text>`,
  );
  chart.series.forEach((s, i) => {
    const colour = PALETTE[i % PALETTE.length];
    const ok = s.points.filter(([a, b]) => Number.isFinite(a) && Number.isFinite(b));
    if (ok.length > 1) out.push(`<polyline fill="none" stroke="${colour}" stroke-width="1.5" points="${ok.map(([a, b]) => `${x(a).toFixed(1)},${y(b).toFixed(1)}`).join(' ')}"/>`);
    for (const [a, b] of ok) out.push(`<circle cx="${x(a).toFixed(1)}" cy="${y(b).toFixed(1)}" r="${3 + (chart.series.length - 1 - i) * 0.6}" fill="none" stroke="${colour}" stroke-width="1.5"/>`);
    const ly = plot.top + 12 + i * 18;
    out.push(
      `<line x1="${plot.left + pw + 12}" y1="${ly}" x2="${plot.left + pw + 34}" y2="${ly}" stroke="${colour}" stroke-width="2"/>`,
      `<text x="${plot.left + pw + 40}" y="${ly}" dominant-baseline="middle">${escapeXml(s.label)}</text>`,
    );
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
