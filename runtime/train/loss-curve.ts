// The loss curve of a run, as a CSV (for tools) and an SVG line chart (for people), both rewritten
// whole at every evaluation. The chart is hand-written SVG so that the trainer has no plotting
// dependency and the file opens in any browser.

import fs from 'node:fs/promises';
import { join } from 'node:path';

export interface LossRow {
  step: number;
  trainLoss?: number;
  valLoss?: number;
  lr: number;
  tokensPerSecond?: number;
}

/** One row per entry; an absent or non-finite value is an empty cell. */
export function lossCsv(rows: readonly LossRow[]): string {
  const cell = (value: number | undefined) => (Number.isFinite(value) ? String(value) : '');
  const lines = ['step,train_loss,val_loss,lr,tokens_per_second'];
  for (const row of rows) {
    lines.push([row.step, row.trainLoss, row.valLoss, row.lr, row.tokensPerSecond].map(cell).join(','));
  }
  return lines.join('\n') + '\n';
}

const WIDTH = 800;
const HEIGHT = 480;
const PLOT = { left: 72, right: 24, top: 48, bottom: 64 };
const TRAIN_COLOUR = '#1f77b4';
const VALIDATION_COLOUR = '#d62728';
const FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"';

/** Train and validation loss against step: axes with ticks and labels, a legend, a title. */
export function lossChartSvg(rows: readonly LossRow[], title = 'Loss'): string {
  const finite = (value: number | undefined): value is number => Number.isFinite(value);
  const train = rows.filter((r) => finite(r.trainLoss)).map((r) => [r.step, r.trainLoss as number] as const);
  const validation = rows.filter((r) => finite(r.valLoss)).map((r) => [r.step, r.valLoss as number] as const);
  const points = [...train, ...validation];

  const xTicks = niceTicks(Math.min(0, ...points.map(([s]) => s)), Math.max(1, ...points.map(([s]) => s)), { integer: true });
  const yTicks = points.length
    ? niceTicks(Math.min(...points.map(([, l]) => l)), Math.max(...points.map(([, l]) => l)))
    : niceTicks(0, 1);
  const [xMin, xMax] = [xTicks[0], xTicks[xTicks.length - 1]];
  const [yMin, yMax] = [yTicks[0], yTicks[yTicks.length - 1]];
  const plotWidth = WIDTH - PLOT.left - PLOT.right;
  const plotHeight = HEIGHT - PLOT.top - PLOT.bottom;
  const x = (step: number) => PLOT.left + ((step - xMin) / (xMax - xMin)) * plotWidth;
  const y = (loss: number) => PLOT.top + (1 - (loss - yMin) / (yMax - yMin)) * plotHeight;
  const coordinates = (series: readonly (readonly [number, number])[]) =>
    series.map(([s, l]) => `${x(s).toFixed(1)},${y(l).toFixed(1)}`).join(' ');

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" ${FONT} font-size="12">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text x="${WIDTH / 2}" y="28" text-anchor="middle" font-size="16" font-weight="600">${escapeXml(title)}</text>`,
  );
  // Grid lines and tick labels; the grid is drawn first so the curves lie on top of it.
  for (const tick of yTicks) {
    const py = y(tick).toFixed(1);
    out.push(
      `<line x1="${PLOT.left}" y1="${py}" x2="${WIDTH - PLOT.right}" y2="${py}" stroke="#e5e5e5"/>`,
      `<text x="${PLOT.left - 8}" y="${py}" text-anchor="end" dominant-baseline="middle">${formatTick(tick, yTicks)}</text>`,
    );
  }
  for (const tick of xTicks) {
    const px = x(tick).toFixed(1);
    out.push(
      `<line x1="${px}" y1="${PLOT.top}" x2="${px}" y2="${HEIGHT - PLOT.bottom}" stroke="#e5e5e5"/>`,
      `<text x="${px}" y="${HEIGHT - PLOT.bottom + 18}" text-anchor="middle">${formatTick(tick, xTicks)}</text>`,
    );
  }
  out.push(
    `<rect x="${PLOT.left}" y="${PLOT.top}" width="${plotWidth}" height="${plotHeight}" fill="none" stroke="#333"/>`,
    `<text x="${PLOT.left + plotWidth / 2}" y="${HEIGHT - 20}" text-anchor="middle" font-size="13">step</text>`,
    `<text transform="translate(20 ${PLOT.top + plotHeight / 2}) rotate(-90)" text-anchor="middle" font-size="13">loss</text>`,
  );
  if (train.length) {
    out.push(`<polyline fill="none" stroke="${TRAIN_COLOUR}" stroke-width="1.5" stroke-linejoin="round" points="${coordinates(train)}"/>`);
  }
  if (validation.length) {
    out.push(`<polyline fill="none" stroke="${VALIDATION_COLOUR}" stroke-width="2" stroke-linejoin="round" points="${coordinates(validation)}"/>`);
    // Validation is evaluated rarely: mark each evaluation so a single one is still visible.
    for (const [s, l] of validation) {
      out.push(`<circle cx="${x(s).toFixed(1)}" cy="${y(l).toFixed(1)}" r="3" fill="${VALIDATION_COLOUR}"/>`);
    }
  }
  if (!points.length) {
    out.push(`<text x="${PLOT.left + plotWidth / 2}" y="${PLOT.top + plotHeight / 2}" text-anchor="middle" fill="#888">no loss recorded yet</text>`);
  }
  out.push(...legend([
    ['train', TRAIN_COLOUR],
    ['validation', VALIDATION_COLOUR],
  ]));
  out.push('</svg>');
  return out.join('\n') + '\n';
}

function legend(entries: [string, string][]): string[] {
  const right = WIDTH - PLOT.right - 12;
  const out = [`<rect x="${right - 112}" y="${PLOT.top + 10}" width="112" height="${entries.length * 20 + 8}" fill="white" fill-opacity="0.9" stroke="#ccc"/>`];
  entries.forEach(([label, colour], i) => {
    const rowY = PLOT.top + 24 + i * 20;
    out.push(
      `<line x1="${right - 102}" y1="${rowY}" x2="${right - 78}" y2="${rowY}" stroke="${colour}" stroke-width="2"/>`,
      `<text x="${right - 70}" y="${rowY}" dominant-baseline="middle">${label}</text>`,
    );
  });
  return out;
}

/**
 * About five round ticks (1, 2 or 5 × 10^k apart) whose first and last enclose [min, max]; with
 * `integer`, at least 1 apart (steps are whole numbers).
 */
export function niceTicks(min: number, max: number, { target = 5, integer = false } = {}): number[] {
  if (max - min < 1e-12) {
    const pad = Math.abs(min) * 0.05 || 1;
    [min, max] = [min - pad, max + pad];
  }
  const rough = (max - min) / target;
  const magnitude = 10 ** Math.floor(Math.log10(rough));
  const roundSpacing = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= rough) as number;
  const spacing = integer ? Math.max(1, roundSpacing) : roundSpacing;
  // The tolerance keeps a bound that is a multiple of the spacing, like 3.8 / 0.1, from rounding away.
  const first = Math.floor(min / spacing + 1e-9);
  const last = Math.ceil(max / spacing - 1e-9);
  // Multiplying integers by the spacing (rather than summing it) keeps 0.1 + 0.2-style drift away.
  return Array.from({ length: last - first + 1 }, (_, i) => Number(((first + i) * spacing).toPrecision(12)));
}

/** As many decimals as the tick spacing needs, and thousands as "k" for step counts. */
function formatTick(value: number, ticks: number[]): string {
  const spacing = ticks.length > 1 ? ticks[1] - ticks[0] : 1;
  if (Number.isInteger(spacing) && spacing >= 1000 && value !== 0 && value % 1000 === 0) return `${value / 1000}k`;
  const decimals = Math.max(0, -Math.floor(Math.log10(spacing) + 1e-9));
  return value.toFixed(decimals);
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * Writes `loss.csv` and `loss.svg` into `dir`. Each goes to a temporary name first and is renamed
 * over the old one, so a reader (or a browser refreshing the chart) never sees half a file.
 */
export async function writeLossCurve(dir: string, rows: readonly LossRow[], title?: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  await replaceFile(join(dir, 'loss.csv'), lossCsv(rows));
  await replaceFile(join(dir, 'loss.svg'), lossChartSvg(rows, title));
}

async function replaceFile(path: string, text: string): Promise<void> {
  const temporary = `${path}.${process.pid}.tmp`;
  await fs.writeFile(temporary, text);
  await fs.rename(temporary, path);
}
