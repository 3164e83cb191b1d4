// The lesson's arithmetic (section 4 of the /ui page): geometry, cross-correlation, pooling, the
// network's activations, typed kernels and how numbers are written. Pure functions of their
// arguments: no DOM, no state, no imports, so Node runs them as they are
// (tests/js/lesson-math.test.mjs, against numpy's answers; tests/test_lesson_math.py runs it).

// Padding before (top/left) and after (bottom/right) and the output size, as Keras computes them.
// "same" pads so the output is ceil(n / s) wide, the odd pixel of padding going bottom/right;
// p = total / 2 (0.5 when the two sides differ) is the p of floor((n + 2p - f) / s) + 1.
export function geometry(n, f, s, padding) {
  let total = 0;
  if (padding === "same") total = Math.max((Math.ceil(n / s) - 1) * s + f - n, 0);
  const before = Math.floor(total / 2);
  const p = total / 2;
  return { n, f, s, p, before, after: total - before, nOut: Math.floor((n + 2 * p - f) / s) + 1 };
}

// The formula with the numbers filled in, written as the layer captions and the layer table
// (pipeline/core/architecture.py) write it.
export function formulaText(g) {
  return `floor((${g.n} + 2*${g.p} - ${g.f}) / ${g.s}) + 1 = ${g.nOut}`;
}

// Cross-correlation (deep learning's "convolution": the kernel is not flipped) of C channels
// (each a Float64Array of n*n, row-major) with a C x f x f kernel; zeros outside the input.
export function correlate(channels, n, kernel, g) {
  const out = new Float64Array(Math.max(g.nOut, 0) ** 2);
  for (let r = 0; r < g.nOut; r++) {
    for (let c = 0; c < g.nOut; c++) {
      let sum = 0;
      for (const term of windowTerms(channels, n, kernel, g, r, c)) sum += term.x * term.w;
      out[r * g.nOut + c] = sum;
    }
  }
  return out;
}

// The f*f*C products behind output pixel (r, c): input position (row, col, possibly in the zero
// frame), its value x and the weight w, in reading order, channel by channel.
export function windowTerms(channels, n, kernel, g, r, c) {
  const terms = [];
  channels.forEach((values, ch) => {
    for (let i = 0; i < g.f; i++) {
      for (let j = 0; j < g.f; j++) {
        const row = r * g.s + i - g.before;
        const col = c * g.s + j - g.before;
        const inside = row >= 0 && row < n && col >= 0 && col < n;
        terms.push({ ch, row, col, x: inside ? values[row * n + col] : 0, w: kernel[ch][i][j] });
      }
    }
  });
  return terms;
}

// One conv layer of the lesson: the input's C channels (each n*n) in the chosen units (`unit`
// times each value: 1/255 puts pixels in the network's 0-1), and a C x f x f filter made of the
// f x f kernel `rows` times each channel's factor (1, -1 or 0: the colour filter's choices).
// Returns the scaled channels, that filter, the geometry and the output map (empty if none).
export function convolve(channels, n, rows, { factors, unit, stride, padding }) {
  const scaled = channels.map((values) => values.map((v) => v * unit));
  const filter = factors.map((m) => rows.map((row) => row.map((w) => w * m + 0))); // + 0: no -0
  const g = geometry(n, rows.length, stride, padding);
  const out = g.nOut >= 1 ? correlate(scaled, n, filter, g) : new Float64Array(0);
  return { channels: scaled, filter, g, out };
}

// Max pooling of an m x m map with an f x f window at stride s (no padding, like the network's).
// `from` holds, for each pooled cell, the index into `map` of the maximum chosen (the first one
// in reading order when several are equal).
export function maxPool(map, m, f, s) {
  const n = Math.floor((m - f) / s) + 1;
  const values = new Float64Array(Math.max(n, 0) ** 2);
  const from = new Int32Array(values.length);
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < n; c++) {
      let best = -Infinity;
      for (let i = 0; i < f; i++) {
        for (let j = 0; j < f; j++) {
          const k = (r * s + i) * m + c * s + j;
          if (map[k] > best) [best, from[r * n + c]] = [map[k], k];
        }
      }
      values[r * n + c] = best;
    }
  }
  return { n, values, from };
}

// The cell (r, c) of an n x n map with the largest magnitude (the first, on a tie): the pixel
// the page picks to work out first.
export function strongest(values, n) {
  let best = 0;
  values.forEach((v, k) => {
    if (Math.abs(v) > Math.abs(values[best])) best = k;
  });
  return { r: Math.floor(best / n), c: best % n };
}

// The error function, for GELU: Abramowitz and Stegun 7.1.26, |error| < 1.5e-7, far below what
// the page shows.
export function erf(x) {
  const t = 1 / (1 + 0.3275911 * Math.abs(x));
  const y =
    1 -
    ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) *
      t *
      Math.exp(-x * x);
  return x < 0 ? -y : y;
}

// The activations g the network may use (pipeline/promotion/export.py names them).
export const ACTIVATIONS = {
  linear: { text: "g(z) = z", g: (z) => z },
  relu: { text: "ReLU(z) = max(0, z)", g: (z) => Math.max(0, z) },
  elu: { text: "ELU(z)", g: (z) => (z > 0 ? z : Math.exp(z) - 1) },
  gelu: { text: "GELU(z) = z·Φ(z)", g: (z) => 0.5 * z * (1 + erf(z / Math.SQRT2)) },
  swish: { text: "swish(z) = z·σ(z)", g: (z) => z / (1 + Math.exp(-z)) },
  silu: { text: "swish(z) = z·σ(z)", g: (z) => z / (1 + Math.exp(-z)) },
  tanh: { text: "tanh(z)", g: Math.tanh },
};

// A kernel typed as rows of numbers (newlines or ";" between rows; spaces or "," between
// numbers; brackets ignored). Returns {kernel} or {error} naming what is wrong.
export function parseKernel(text) {
  const rows = text
    .replace(/[[\]]/g, " ")
    .replace(/\u2212/g, "-")
    .split(/[;\n]/)
    .map((row) => row.trim())
    .filter(Boolean)
    .map((row) => row.split(/[\s,]+/));
  const f = rows.length;
  if (f < 1 || f > 7) return { error: `a kernel has 1 to 7 rows; this has ${f}` };
  const kernel = [];
  for (const [i, row] of rows.entries()) {
    if (row.length !== f) {
      return { error: `row ${i + 1} has ${row.length} numbers: a ${f}-row kernel is ${f}×${f}` };
    }
    const numbers = row.map(Number);
    const bad = row.find((word, j) => word === "" || !Number.isFinite(numbers[j]));
    if (bad !== undefined) return { error: `"${bad}" in row ${i + 1} is not a number` };
    kernel.push(numbers);
  }
  return { kernel };
}

// Numbers as the page writes them: integers as integers, others with `digits` decimals at most;
// negative numbers with a real minus sign, in brackets when they are a factor.
export function fmt(value, digits = 4) {
  const text = Number.isInteger(value) ? String(value) : String(Number(value.toFixed(digits)));
  return text.replace("-", "\u2212");
}

export function factor(value, digits) {
  return value < 0 ? `(${fmt(value, digits)})` : fmt(value, digits);
}

// An n x n map (row-major) as "[a b; c d]".
export function matrixText(values, n, digits) {
  const rows = [];
  for (let r = 0; r < n; r++) {
    rows.push(Array.from(values.subarray(r * n, r * n + n), (v) => fmt(v, digits)).join(" "));
  }
  return `[${rows.join("; ")}]`;
}

// The value a layer's feature-map picture shows for channel k at (r, c). `picture` is that
// picture's RGBA pixels (`data`, `width`: gray, so red is the level) and its `layer` from
// /explain: maps {tile, gap, cols} places channel k's tile; low[k] and high[k] are what black
// and white stand for. `step` is one gray level's worth, the picture's rounding.
export function mapPictureValue(picture, k, r, c) {
  const { maps: grid, low, high } = picture.layer;
  const step = grid.tile + grid.gap;
  const x = (k % grid.cols) * step + c;
  const y = Math.floor(k / grid.cols) * step + r;
  const level = picture.data[(y * picture.width + x) * 4];
  const span = high[k] - low[k];
  const value = low[k] + (level / 255) * span;
  return { level, low: low[k], high: high[k], value, step: span / 255 };
}
