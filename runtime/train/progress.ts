// Progress of a long run. On a terminal: one line redrawn in place (bar, step, loss, lr, tokens/s,
// ETA), with other output printed above it. Elsewhere (a log file, CI): a plain line every few
// steps or seconds, since a redrawn line would fill a file with carriage returns.

import { Chalk, type ChalkInstance } from 'chalk';

/** The part of a Node writable stream the reporter uses; tests pass a recorder. */
export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressOptions {
  totalSteps: number;
  stream?: ProgressStream;
  /** Redraw one line in place; by default when the stream is a terminal. */
  interactive?: boolean;
  /** Not interactive: print at least every this many steps... */
  everySteps?: number;
  /** ...or when this long has passed since the last line, whichever comes first. */
  everyMs?: number;
  /** Interactive: redraw at most this often, so that fast steps do not flood the terminal. */
  redrawMs?: number;
  /** By default on a terminal unless NO_COLOR is set (https://no-color.org). */
  colour?: boolean;
  /** Milliseconds; injectable so that tests control time. */
  now?: () => number;
}

export interface StepReport {
  /** The 0-based index of the step that just finished; shown as step + 1 of the total. */
  step: number;
  loss?: number;
  lr?: number;
  tokensPerSecond?: number;
}

const BAR_MIN = 10;
const BAR_MAX = 30;

export class ProgressReporter {
  private readonly stream: ProgressStream;
  private readonly interactive: boolean;
  private readonly colours: ChalkInstance;
  private readonly now: () => number;
  private firstReport?: { done: number; at: number };
  private lastReport?: StepReport;
  /** What the terminal's last line currently shows; undefined when no bar is drawn. */
  private drawnBar?: string;
  private lastDrawAt = -Infinity;
  private lastPrinted?: { done: number; at: number };

  constructor(private readonly options: ProgressOptions) {
    this.stream = options.stream ?? process.stderr;
    this.interactive = options.interactive ?? this.stream.isTTY === true;
    const colour = options.colour ?? (this.interactive && !process.env.NO_COLOR);
    this.colours = new Chalk({ level: colour ? 1 : 0 });
    this.now = options.now ?? (() => performance.now());
  }

  update(report: StepReport): void {
    const at = this.now();
    const done = report.step + 1;
    this.firstReport ??= { done, at };
    this.lastReport = report;
    const last = done >= this.options.totalSteps;
    if (this.interactive) {
      if (last || at - this.lastDrawAt >= (this.options.redrawMs ?? 100)) this.draw(at);
      return;
    }
    const { everySteps = 10, everyMs = 10_000 } = this.options;
    const due = !this.lastPrinted || done - this.lastPrinted.done >= everySteps || at - this.lastPrinted.at >= everyMs;
    if (due || last) this.printPlain(at);
  }

  /** Prints a line of its own; on a terminal it goes above the bar, which is then redrawn. */
  log(line: string): void {
    if (this.drawnBar !== undefined) {
      this.stream.write(`\r\x1b[K${line}\n`);
      this.draw(this.now());
    } else {
      this.stream.write(`${line}\n`);
    }
  }

  /** Shows the final state and leaves the cursor on a fresh line. */
  finish(): void {
    if (!this.lastReport) return;
    const at = this.now();
    if (this.interactive) {
      this.draw(at);
      this.stream.write('\n');
      this.drawnBar = undefined;
    } else if (this.lastPrinted?.done !== this.lastReport.step + 1) {
      this.printPlain(at);
    }
  }

  private draw(at: number): void {
    this.drawnBar = `\r${this.barLine(at)}\x1b[K`;
    this.lastDrawAt = at;
    this.stream.write(this.drawnBar);
  }

  private printPlain(at: number): void {
    const report = this.lastReport as StepReport;
    const done = report.step + 1;
    const percent = ((100 * done) / this.options.totalSteps).toFixed(1);
    this.stream.write(`step ${done}/${this.options.totalSteps} (${percent}%) | ${this.fields(at).join(' | ')}\n`);
    this.lastPrinted = { done, at };
  }

  /**
   * Fits the terminal width: the bar shrinks first, then the text is cut, so the line never wraps
   * (a wrapped line cannot be redrawn with `\r`). Only the bar is coloured, so that cutting the
   * text never splits an escape sequence.
   */
  private barLine(at: number): string {
    const report = this.lastReport as StepReport;
    const { totalSteps } = this.options;
    const done = report.step + 1;
    const text = ` ${String(done).padStart(String(totalSteps).length)}/${totalSteps} │ ${this.fields(at).join(' │ ')}`;
    const columns = (this.stream.columns ?? 80) - 1;
    const barWidth = Math.max(BAR_MIN, Math.min(BAR_MAX, columns - text.length - 2));
    const filled = Math.round(barWidth * Math.min(1, done / totalSteps));
    const bar = this.colours.cyan('█'.repeat(filled)) + this.colours.dim('░'.repeat(barWidth - filled));
    return `[${bar}]${text.slice(0, Math.max(0, columns - barWidth - 2))}`;
  }

  private fields(at: number): string[] {
    const { loss, lr, tokensPerSecond, step } = this.lastReport as StepReport;
    const out: string[] = [];
    if (loss !== undefined) out.push(`loss ${loss.toFixed(4)}`);
    if (lr !== undefined) out.push(`lr ${lr.toExponential(2)}`);
    if (tokensPerSecond !== undefined) out.push(`${formatCount(tokensPerSecond)} tok/s`);
    out.push(`eta ${this.eta(step + 1, at)}`);
    return out;
  }

  /**
   * Measured from the first report rather than from construction, so that the first step's one-off
   * cost (compiling the program, warming the caches) does not inflate the estimate.
   */
  private eta(done: number, at: number): string {
    const first = this.firstReport as { done: number; at: number };
    if (done >= this.options.totalSteps) return formatDuration(0);
    if (done <= first.done) return '--';
    const msPerStep = (at - first.at) / (done - first.done);
    return formatDuration(msPerStep * (this.options.totalSteps - done));
  }
}

/** 950, 45.2k, 1.23M. */
export function formatCount(value: number): string {
  if (value >= 1e6) return `${(value / 1e6).toFixed(2)}M`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(1)}k`;
  return value.toFixed(0);
}

/** 45s, 12m05s, 3h07m. */
export function formatDuration(ms: number): string {
  const seconds = Math.max(0, Math.round(ms / 1000));
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m${String(seconds % 60).padStart(2, '0')}s`;
  return `${Math.floor(minutes / 60)}h${String(minutes % 60).padStart(2, '0')}m`;
}
