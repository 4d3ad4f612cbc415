// An SVG line chart of throughput against concurrency (both axes logarithmic), for
// docs/benchmarks.md. Small enough to write by hand; no charting dependency for one picture.
import type { BenchmarkResult } from './results.js';
import { human } from './results.js';

const width = 720;
const height = 420;
const margin = { left: 80, right: 190, top: 40, bottom: 50 };
const colours = ['#d62728', '#1f77b4', '#2ca02c', '#7f7f7f', '#9467bd'];

const escape = (text: string) =>
  text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function throughputChart(
  series: NonNullable<BenchmarkResult['series']>,
  title: string,
): string {
  const points = Object.values(series).flat();
  const xs = points.map((p) => Math.log10(p.concurrency));
  const ys = points.map((p) => Math.log10(Math.max(1, p.perSecond)));
  const [xMin, xMax] = [Math.min(...xs), Math.max(...xs)];
  const [yMin, yMax] = [Math.floor(Math.min(...ys)), Math.ceil(Math.max(...ys))];
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const x = (concurrency: number) =>
    margin.left + ((Math.log10(concurrency) - xMin) / (xMax - xMin || 1)) * plotWidth;
  const y = (perSecond: number) =>
    margin.top +
    plotHeight -
    ((Math.log10(Math.max(1, perSecond)) - yMin) / (yMax - yMin || 1)) * plotHeight;

  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="15">${escape(title)}</text>`,
  ];
  for (let power = yMin; power <= yMax; power++) {
    const at = y(10 ** power);
    parts.push(
      `<line x1="${margin.left}" x2="${margin.left + plotWidth}" y1="${at}" y2="${at}" stroke="#ddd"/>`,
      `<text x="${margin.left - 8}" y="${at + 4}" text-anchor="end">${human(10 ** power)}/s</text>`,
    );
  }
  for (const concurrency of new Set(points.map((p) => p.concurrency))) {
    const at = x(concurrency);
    parts.push(
      `<line x1="${at}" x2="${at}" y1="${margin.top}" y2="${margin.top + plotHeight}" stroke="#eee"/>`,
      `<text x="${at}" y="${margin.top + plotHeight + 18}" text-anchor="middle">${concurrency}</text>`,
    );
  }
  parts.push(
    `<text x="${margin.left + plotWidth / 2}" y="${height - 10}" text-anchor="middle">increments in flight</text>`,
  );
  Object.entries(series).forEach(([name, line], i) => {
    const colour = colours[i % colours.length] ?? 'black';
    const path = line.map((p) => `${x(p.concurrency).toFixed(1)},${y(p.perSecond).toFixed(1)}`);
    parts.push(
      `<polyline fill="none" stroke="${colour}" stroke-width="2" points="${path.join(' ')}"/>`,
      ...line.map(
        (p) =>
          `<circle cx="${x(p.concurrency).toFixed(1)}" cy="${y(p.perSecond).toFixed(1)}" r="3" fill="${colour}"/>`,
      ),
      `<rect x="${width - margin.right + 15}" y="${margin.top + i * 22}" width="14" height="4" fill="${colour}"/>`,
      `<text x="${width - margin.right + 35}" y="${margin.top + i * 22 + 6}">${escape(name)}</text>`,
    );
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
