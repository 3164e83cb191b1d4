// service/ui/lesson-math.js in Node's own test runner (no npm packages), against numpy.
//
// The cases are numpy's answers on the kernels, paddings, strides and pooling windows that
// tests/test_lesson.py works in the browser: tests/test_lesson_math.py writes them to a JSON file,
// names it in LESSON_MATH_CASES and runs this file with `node --test`. Run it that way:
//   pytest tests/test_lesson_math.py
// Each case is one test, so the number of tests run is the number of cases plus one.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import test from "node:test";

// Node 18 (Debian 12's) reads a .js file outside a `"type": "module"` package as CommonJS, and
// the page's files are served as they are, without a package.json. So the module's text is
// imported as an ES module from a data: URL: lesson-math.js imports nothing, so that is the whole
// of it, exactly the code the browser runs.
const source = readFileSync(new URL("../../service/ui/lesson-math.js", import.meta.url));
const math = await import(`data:text/javascript;base64,${source.toString("base64")}`);

if (!process.env.LESSON_MATH_CASES) {
  throw new Error("LESSON_MATH_CASES is not set: run pytest tests/test_lesson_math.py");
}
const cases = JSON.parse(readFileSync(process.env.LESSON_MATH_CASES, "utf8"));

// Element by element within `tolerance` (0: equal as numbers, so -0 and 0 are the same).
function close(actual, expected, tolerance, what) {
  const values = Array.from(actual);
  const counts = `${what}: ${values.length} values, numpy ${expected.length}`;
  assert.equal(values.length, expected.length, counts);
  values.forEach((value, i) => {
    const ok = Math.abs(value - expected[i]) <= tolerance;
    assert.ok(ok, `${what}[${i}]: ${value}, numpy ${expected[i]} (tolerance ${tolerance})`);
  });
}

const runners = {
  // geometry(n, f, s, padding) and the formula text: numpy's padding, Keras's rule.
  geometry(c) {
    const g = math.geometry(c.n, c.f, c.s, c.padding);
    const { n, f, s, p, before, after, nOut } = c;
    assert.deepEqual(g, { n, f, s, p, before, after, nOut });
    assert.equal(math.formulaText(g), c.formula);
  },

  // One conv layer: the output map, the filter, the first pixel picked and the written-out sums.
  conv(c) {
    const channels = c.channels.map((values) => Float64Array.from(values));
    const { factors, unit, stride, padding } = c;
    const result = math.convolve(channels, c.n, c.rows, { factors, unit, stride, padding });
    assert.equal(result.g.nOut, c.nOut);
    close(result.filter.flat(2), c.filter.flat(2), 0, "filter");
    close(result.out, c.out, 1e-9, "output");
    assert.deepEqual(math.strongest(result.out, c.nOut), c.strongest);
    for (const pixel of c.pixels) {
      const at = `pixel (${pixel.r}, ${pixel.c})`;
      const { channels: scaled, filter, g } = result;
      const terms = math.windowTerms(scaled, c.n, filter, g, pixel.r, pixel.c);
      const where = (t) => `${t[0]}:${t[1]},${t[2]}`;
      assert.deepEqual(terms.map((t) => where([t.ch, t.row, t.col])), pixel.terms.map(where), at);
      close(terms.map((t) => t.x), pixel.terms.map((t) => t[3]), 0, `${at} inputs`);
      close(terms.map((t) => t.w), pixel.terms.map((t) => t[4]), 0, `${at} weights`);
      const sum = terms.reduce((total, t) => total + t.x * t.w, 0);
      const adds = `${at}: the products add up to ${sum}, numpy ${pixel.value}`;
      assert.ok(Math.abs(sum - pixel.value) <= 1e-9, adds);
    }
  },

  // Max pooling: pooled values, where each maximum came from, the pooled size's formula.
  pool(c) {
    const pooled = math.maxPool(Float64Array.from(c.map), c.m, c.f, c.s);
    assert.equal(pooled.n, c.n);
    close(pooled.values, c.values, 0, "pooled");
    assert.deepEqual(Array.from(pooled.from), c.from);
    const g = math.geometry(c.m, c.f, c.s, "valid");
    assert.equal(g.nOut, c.n);
    assert.equal(math.formulaText(g), c.formula);
  },

  // A typed kernel: the numbers, or the error the page shows.
  parse(c) {
    const expected = c.error === undefined ? { kernel: c.kernel } : { error: c.error };
    assert.deepEqual(math.parseKernel(c.text), expected);
  },

  // How numbers are written: fmt, factor, matrixText.
  format(c) {
    const [first, ...rest] = c.args;
    const args = c.fn === "matrixText" ? [Float64Array.from(first), ...rest] : c.args;
    assert.equal(math[c.fn](...args), c.text);
  },

  // The activations g of the chain z = W·a + b, a = g(z): Python's math on the same z.
  activation(c) {
    assert.ok(c.name in math.ACTIVATIONS, `no activation ${c.name}`);
    close(c.z.map(math.ACTIVATIONS[c.name].g), c.a, 1e-6, c.name);
  },

  // erf, for GELU: within the 1.5e-7 its comment promises of Python's math.erf.
  erf(c) {
    close(c.x.map(math.erf), c.y, 1.5e-7, "erf");
  },

  // A feature-map picture as service/explain.py draws it, read back: every pixel of every
  // channel gives the service's gray level and, within half a level, the activation.
  picture(c) {
    const picture = { layer: c.layer, data: Uint8ClampedArray.from(c.data), width: c.width };
    const { tile } = c.layer.maps;
    let i = 0;
    for (let k = 0; k < c.channels; k++) {
      for (let r = 0; r < tile; r++) {
        for (let col = 0; col < tile; col++, i++) {
          const shown = math.mapPictureValue(picture, k, r, col);
          const at = `channel ${k} (${r}, ${col})`;
          assert.equal(shown.level, c.levels[i], at);
          const off = Math.abs(shown.value - c.activations[i]);
          const what = `${at}: ${shown.value}, activation ${c.activations[i]}`;
          assert.ok(off <= shown.step / 2 + c.slack, what);
        }
      }
    }
  },
};

test("every kind of case has a runner and every runner has cases", () => {
  assert.deepEqual(Object.keys(cases).sort(), Object.keys(runners).sort());
  for (const [kind, list] of Object.entries(cases)) assert.ok(list.length > 0, `no ${kind} cases`);
});

for (const [kind, list] of Object.entries(cases)) {
  for (const c of list) test(`${kind}: ${c.name}`, () => runners[kind](c));
}
