// Section 4 of the /ui page: a first CNN course's arithmetic, worked on the person's own image.
// Everything here runs in the browser on the pixels /explain already returned (no request per
// change). The computation is lesson-math.js's (pure functions, tested in Node); this module
// reads the controls, draws the maps and writes the sums out. app.js calls startLesson() once
// and workOnImage() with each /explain answer it draws.
// Past 300 lines: one control, drawing and written-out sum per operation of the lesson (kernel,
// padding, stride, pooling, activation), in the order the page shows them.
import {
  ACTIVATIONS,
  convolve,
  correlate,
  factor,
  fmt,
  formulaText,
  geometry,
  mapPictureValue,
  matrixText,
  maxPool,
  parseKernel,
  strongest,
  windowTerms,
} from "./lesson-math.js";
import { $, element } from "./dom.js";

// --- the kernels on offer ---------------------------------------------------------------------

const CLASSIC = {
  identity: ["identity", [[0, 0, 0], [0, 1, 0], [0, 0, 0]]],
  "sobel-top": ["top Sobel", [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]],
  "sobel-bottom": ["bottom Sobel", [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]],
  "sobel-left": ["left Sobel", [[1, 0, -1], [2, 0, -2], [1, 0, -1]]],
  "sobel-right": ["right Sobel", [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]],
  sharpen: ["sharpen", [[0, -1, 0], [-1, 5, -1], [0, -1, 0]]],
  blur: ["blur", [[0.0625, 0.125, 0.0625], [0.125, 0.25, 0.125], [0.0625, 0.125, 0.0625]]],
  outline: ["outline", [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]],
  emboss: ["emboss", [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]],
  "line-top": ["line: dark above light", [[-1, -1, -1], [1, 1, 1], [0, 0, 0]]],
  "line-left": ["line: dark left of light", [[-1, 1, 0], [-1, 1, 0], [-1, 1, 0]]],
  "line-bottom": ["line: dark below light", [[0, 0, 0], [1, 1, 1], [-1, -1, -1]]],
  "line-right": ["line: dark right of light", [[0, 1, -1], [0, 1, -1], [0, 1, -1]]],
};
const LINES = ["line-top", "line-left", "line-bottom", "line-right"];

const TEXTBOOK = {
  small: {
    label: "4×4 input, 3×3 vertical-edge filter",
    rows: [[3, 0, 1, 2], [1, 5, 8, 9], [2, 7, 2, 5], [0, 1, 3, 1]],
    kernel: "1 0 -1\n1 0 -1\n1 0 -1",
    stride: 1,
    note: "valid padding gives 2×2, same padding 4×4: switch it and watch the formula.",
  },
  strided: {
    label: "7×7 input, stride 2",
    rows: [
      [2, 3, 7, 4, 6, 2, 9], [6, 6, 9, 8, 7, 4, 3], [3, 4, 8, 3, 8, 9, 7], [7, 8, 3, 6, 6, 3, 4],
      [4, 2, 1, 8, 3, 4, 6], [3, 2, 4, 1, 9, 8, 3], [0, 1, 3, 9, 2, 1, 4],
    ],
    kernel: "3 4 4\n1 0 2\n-1 0 3",
    stride: 2,
    note:
      "some copies of this slide print 83 and 127 for the top-right and middle-right cells; " +
      "point at them: their nine products add up to 88 and 117.",
  },
}; // prettier-ignore

// --- state and drawing ------------------------------------------------------------------------

const NEGATIVE = [33, 102, 172]; // the filters' colours in section 3: blue negative, red positive
const POSITIVE = [178, 24, 43];
const CHANNEL_TINT = [[255, 0, 0], [0, 255, 0], [0, 0, 255]];

const lesson = {
  explained: null, // the /explain answer of the person's image
  mapPicture: null, // the first conv layer's maps as section 3 draws them: {layer, data, width}
  sel: null, // the chosen output pixel {r, c}
  poolSel: null,
  result: null, // the last computation (see compute)
};

function diverging(value, scale) {
  const t = Math.max(-1, Math.min(1, value / (scale || 1)));
  const end = t < 0 ? NEGATIVE : POSITIVE;
  return end.map((e) => Math.round(255 + (e - 255) * Math.abs(t)));
}

function setText(id, text) {
  $(id).textContent = text;
}

function cellSize(cells) {
  return cells <= 12 ? 40 : 10;
}

// A square grid of cells drawn on a canvas: fill(i, j) -> CSS colour, label(i, j) -> text or "".
function drawGrid(canvas, cells, fill, label = () => "") {
  const size = cellSize(cells);
  canvas.width = canvas.height = cells * size;
  canvas.dataset.cells = String(cells);
  const pen = canvas.getContext("2d");
  pen.font = `${Math.round(size * 0.36)}px system-ui, sans-serif`;
  pen.textAlign = "center";
  pen.textBaseline = "middle";
  for (let i = 0; i < cells; i++) {
    for (let j = 0; j < cells; j++) {
      const [color, text] = [fill(i, j), label(i, j)];
      pen.fillStyle = color;
      pen.fillRect(j * size, i * size, size, size);
      if (size > 10) {
        pen.strokeStyle = "#d0d7de";
        pen.strokeRect(j * size + 0.5, i * size + 0.5, size - 1, size - 1);
      }
      if (text) {
        const [r, g, b] = color.match(/\d+/g).map(Number);
        pen.fillStyle = 0.299 * r + 0.587 * g + 0.114 * b > 140 ? "#1b1f24" : "#fff";
        pen.fillText(text, (j + 0.5) * size, (i + 0.5) * size);
      }
    }
  }
}

function outline(canvas, row, col, cells, colour, dashed = false) {
  const size = canvas.width / Number(canvas.dataset.cells);
  const pen = canvas.getContext("2d");
  pen.save();
  pen.lineWidth = Math.max(2, size / 8);
  pen.setLineDash(dashed ? [size / 3, size / 5] : []);
  pen.strokeStyle = "#000";
  pen.strokeRect(col * size + 1, row * size + 1, cells * size - 2, cells * size - 2);
  pen.strokeStyle = colour;
  pen.lineWidth = Math.max(1, size / 16);
  pen.strokeRect(col * size + 1, row * size + 1, cells * size - 2, cells * size - 2);
  pen.restore();
}

function rgb(values) {
  return `rgb(${values.join(",")})`;
}

// --- what to compute --------------------------------------------------------------------------

// The input: C channels of n*n values, their units, and how to draw them.
function currentInput() {
  const choice = $("lesson-input").value;
  if (choice in TEXTBOOK) {
    const rows = TEXTBOOK[choice].rows;
    return { n: rows.length, channels: [Float64Array.from(rows.flat())], units: "raw", kind: choice };
  }
  const image = lesson.explained;
  if (choice === "colour" && image.colour) {
    const channels = [0, 1, 2].map((ch) => Float64Array.from(image.colour.flat(), (px) => px[ch]));
    return { n: 28, channels, units: "pixels", kind: "colour" };
  }
  return { n: 28, channels: [Float64Array.from(image.pixels.flat())], units: "pixels", kind: "gray" };
}

// The kernel as {name, f, rows, learned (filter index or null)}, or {error}.
function currentKernel() {
  const choice = $("lesson-kernel").value;
  if (choice === "typed") {
    const parsed = parseKernel($("lesson-typed").value);
    if (parsed.error) return parsed;
    return { name: "Your kernel", f: parsed.kernel.length, rows: parsed.kernel, learned: null };
  }
  if (choice.startsWith("learned:")) {
    const k = Number(choice.slice(8));
    const filters = lesson.explained.filters;
    const name = `${filters.layer}'s learned filter #${k}`;
    return { name, f: filters.f, rows: filters.kernels[k], learned: k };
  }
  const [name, rows] = CLASSIC[choice];
  return { name: `The ${name} kernel`, f: rows.length, rows, learned: null };
}

function radio(name) {
  return document.querySelector(`input[name="${name}"]:checked`).value;
}

// Per-channel multipliers of a colour input's 3 x f x f filter (the kernel above, negated, or 0).
function channelFactors(count) {
  if (count === 1) return [1];
  return ["r", "g", "b"].map((ch) => Number($(`lesson-mix-${ch}`).value));
}

function compute() {
  const input = currentInput();
  const kernel = currentKernel();
  showKernelError(kernel.error || "");
  if (kernel.error) return null;
  // The network computes on pixels scaled to 0-1; the classic kernels are shown on 0-255 pixels.
  const unit = input.units === "pixels" && kernel.learned !== null ? 1 / 255 : 1;
  const { channels, filter, g, out } = convolve(input.channels, input.n, kernel.rows, {
    factors: channelFactors(input.channels.length),
    unit,
    stride: Number(radio("lesson-stride")),
    padding: radio("lesson-padding"),
  });
  const digits = unit === 1 ? 4 : 5;
  return { input, kernel, unit, channels, filter, g, out, digits };
}

// --- rendering --------------------------------------------------------------------------------

function showKernelError(text) {
  setText("lesson-kernel-error", text ? `Kernel: ${text}.` : "");
  $("lesson-kernel-error").hidden = !text;
  $("lesson-work").hidden = Boolean(text);
}

// A changed pixel or pooled cell: redraw what shows the selection; nothing is recomputed.
function redrawSelection() {
  if (!lesson.result) return;
  drawOutput(lesson.result);
  drawPooling(lesson.result, true);
  explainPixel();
}

function update({ keepSelection = false } = {}) {
  const result = compute();
  lesson.result = result;
  if (!result) return;
  const { g, out } = result;
  if (!keepSelection || !lesson.sel || lesson.sel.r >= g.nOut || lesson.sel.c >= g.nOut) {
    lesson.sel = g.nOut >= 1 ? strongest(out, g.nOut) : null;
  }
  drawKernel(result);
  drawOutput(result);
  drawPooling(result, keepSelection);
  drawStack(result);
  explainPixel();
}

// Channel ch's value at cell (i, j) of the padded input, or null in the zero frame.
function paddedValue(input, g, ch, i, j) {
  const [row, col] = [i - g.before, j - g.before];
  const inside = row >= 0 && row < input.n && col >= 0 && col < input.n;
  return inside ? input.channels[ch][row * input.n + col] : null;
}

const FRAME = "rgb(246,248,250)"; // the zero padding, drawn pale

function drawInput(result) {
  const { input, g, unit } = result;
  const cells = input.n + g.before + g.after;
  const small = input.n <= 12;
  const canvas = $("lesson-in");
  const value = (ch, i, j) => paddedValue(input, g, ch, i, j);
  const high = Math.max(...input.channels.map((values) => Math.max(...values)), 1);
  drawGrid(
    canvas,
    cells,
    (i, j) => {
      if (value(0, i, j) === null) return FRAME;
      if (input.kind === "colour") return rgb([0, 1, 2].map((ch) => value(ch, i, j)));
      const level = Math.round((255 * value(0, i, j)) / (small ? high * 2.5 : 255));
      return small ? rgb([255 - level, 255 - level, 255]) : rgb([level, level, level]);
    },
    (i, j) => (small ? fmt(value(0, i, j) ?? 0) : ""),
  );
  if (g.before + g.after > 0) {
    // The padding frame: a dashed line where the real input starts.
    const size = canvas.width / cells;
    const pen = canvas.getContext("2d");
    pen.save();
    pen.setLineDash([4, 3]);
    pen.strokeStyle = "#57606a";
    pen.strokeRect(g.before * size, g.before * size, input.n * size, input.n * size);
    pen.restore();
  }
  if (lesson.sel) {
    outline(canvas, lesson.sel.r * g.s, lesson.sel.c * g.s, g.f, "#ffd33d");
  }
  const units =
    input.units === "raw"
      ? "the textbook's numbers"
      : unit === 1
        ? "pixels 0-255"
        : "pixels ÷ 255, i.e. 0-1: the network's units";
  const frame =
    g.before + g.after > 0
      ? `; the pale frame is the zero padding (${g.before} before, ${g.after} after)`
      : "";
  setText(
    "lesson-in-caption",
    `Input: ${input.n}×${input.n}${input.kind === "colour" ? "×3" : ""}, ${units}${frame}.`,
  );
  drawChannels(result);
}

function drawChannels(result) {
  const { input, g } = result;
  const colour = input.kind === "colour";
  $("lesson-colour").hidden = !colour;
  if (!colour) return;
  ["r", "g", "b"].forEach((name, ch) => {
    const canvas = $(`lesson-channel-${name}`);
    const cells = input.n + g.before + g.after;
    drawGrid(canvas, cells, (i, j) => {
      const v = paddedValue(input, g, ch, i, j);
      return v === null ? FRAME : rgb(CHANNEL_TINT[ch].map((t) => Math.round((t * v) / 255)));
    });
    if (lesson.sel) outline(canvas, lesson.sel.r * g.s, lesson.sel.c * g.s, g.f, "#ffd33d");
  });
}

function drawKernel(result) {
  const { filter, kernel, input } = result;
  const scale = Math.max(...filter.flat(2).map(Math.abs), 1e-12);
  const names = ["R", "G", "B"];
  const tables = filter.map((channel, ch) => {
    const table = document.createElement("table");
    table.className = "kernel";
    if (filter.length > 1) table.createCaption().textContent = names[ch];
    for (const row of channel) {
      const tr = table.insertRow();
      for (const w of row) {
        const td = tr.insertCell();
        td.textContent = fmt(w, 4);
        td.style.background = rgb(diverging(w, scale));
        td.style.color = Math.abs(w) / scale > 0.6 ? "#fff" : "#1b1f24";
      }
    }
    return table;
  });
  $("lesson-kernel-tables").replaceChildren(...tables);
  const shape = filter.length > 1 ? `${kernel.f}×${kernel.f}×3 = ${kernel.f ** 2 * 3} numbers` : `${kernel.f}×${kernel.f}`;
  const note =
    input.kind === "colour" ? ": one f×f slice per input channel, all summed into one output" : "";
  setText("lesson-kernel-caption", `${kernel.name}, ${shape}${note}.`);
}

function drawOutput(result) {
  const { g, out, digits } = result;
  const canvas = $("lesson-out");
  const ok = g.nOut >= 1;
  $("lesson-out-figure").hidden = !ok;
  setText("lesson-formula", formulaText(g));
  const pad =
    radio("lesson-padding") === "valid"
      ? "valid: no padding, p = 0"
      : g.before === g.after
        ? `same: p = ${g.p} on every side, so the output keeps ceil(n / s) = ${g.nOut}`
        : `same: Keras pads ${g.before} above and left, ${g.after} below and right (p = ${g.p}) so the output is ceil(n / s) = ${g.nOut}`;
  const fits = ok ? "" : ` The ${g.f}×${g.f} kernel does not fit in the ${g.n}×${g.n} input: no output.`;
  setText("lesson-padding-note", `${pad}.${fits}`);
  if (!ok) {
    $("lesson-values").hidden = true;
    drawInput(result);
    return;
  }
  const scale = Math.max(...out.map(Math.abs)) || 1;
  result.scale = scale;
  const small = g.nOut <= 12;
  drawGrid(
    canvas,
    g.nOut,
    (i, j) => rgb(diverging(out[i * g.nOut + j], scale)),
    (i, j) => (small ? fmt(out[i * g.nOut + j], 2) : ""),
  );
  if (lesson.sel) outline(canvas, lesson.sel.r, lesson.sel.c, 1, "#ffd33d");
  setText("lesson-size", `Output drawn: ${g.nOut}×${g.nOut}.`);
  setText("legend-low", `−${fmt(scale, digits)}`);
  setText("legend-high", `+${fmt(scale, digits)}`);
  $("lesson-values").hidden = !small;
  setText("lesson-values", small ? `Output values: ${matrixText(out, g.nOut, digits)}` : "");
  drawInput(result);
}

function drawPooling(result, keepSelection) {
  const { g, out, digits } = result;
  const f = Number($("lesson-pool").value);
  const s = Number($("lesson-pool-stride").value);
  const box = $("lesson-pooled");
  box.hidden = f === 0 || g.nOut < 1;
  $("lesson-pool-stride").disabled = f === 0;
  result.pool = null;
  if (box.hidden) return;
  const pg = geometry(g.nOut, f, s, "valid");
  setText("lesson-pool-formula", formulaText(pg));
  if (pg.nOut < 1) {
    setText("lesson-pool-size", `The ${f}×${f} window does not fit in the ${g.nOut}×${g.nOut} map.`);
    $("lesson-pool-figure").hidden = true;
    return;
  }
  $("lesson-pool-figure").hidden = false;
  const pooled = maxPool(out, g.nOut, f, s);
  result.pool = pooled;
  const sel = lesson.poolSel;
  if (!keepSelection || !sel || sel.r >= pooled.n || sel.c >= pooled.n) {
    lesson.poolSel = strongest(pooled.values, pooled.n);
  }
  const small = pooled.n <= 12;
  const canvas = $("lesson-pool-out");
  drawGrid(
    canvas,
    pooled.n,
    (i, j) => rgb(diverging(pooled.values[i * pooled.n + j], result.scale)),
    (i, j) => (small ? fmt(pooled.values[i * pooled.n + j], 2) : ""),
  );
  outline(canvas, lesson.poolSel.r, lesson.poolSel.c, 1, "#2da44e");
  setText("lesson-pool-size", `Pooled map drawn: ${pooled.n}×${pooled.n}.`);
  const { r, c } = lesson.poolSel;
  outline($("lesson-out"), r * s, c * s, f, "#2da44e", true);
  const pooledWindow = [];
  for (let i = 0; i < f; i++) {
    for (let j = 0; j < f; j++) pooledWindow.push(fmt(out[(r * s + i) * g.nOut + c * s + j], digits));
  }
  const at = pooled.from[r * pooled.n + c];
  setText(
    "lesson-pool-max",
    `Pooled cell (row ${r}, column ${c}): max(${pooledWindow.join(", ")}) = ` +
      `${fmt(pooled.values[r * pooled.n + c], digits)}, from output pixel ` +
      `(row ${Math.floor(at / g.nOut)}, column ${at % g.nOut}).`,
  );
}

// The worked sum of the chosen output pixel, then the network's next steps when they apply.
function explainPixel() {
  const result = lesson.result;
  if (!result || !lesson.sel || result.g.nOut < 1) {
    $("lesson-sum").replaceChildren();
    return;
  }
  const { r, c } = lesson.sel;
  const { g, input, channels, filter, out, digits } = result;
  const terms = windowTerms(channels, input.n, filter, g, r, c);
  const value = out[r * g.nOut + c];
  const subtotals = [];
  const lines = channels.map((_, ch) => {
    const mine = terms.filter((t) => t.ch === ch);
    const products = mine.map((t) => `${fmt(t.x, 4)}×${factor(t.w, 4)}`).join(" + ");
    subtotals.push(mine.reduce((sum, t) => sum + t.x * t.w, 0));
    const text =
      channels.length === 1
        ? `${products} = ${fmt(value, digits)}`
        : `${"RGB"[ch]}: ${products} = ${fmt(subtotals[ch], digits)}`;
    return element("code", { textContent: text });
  });
  if (channels.length > 1) {
    const text = `${subtotals.map((v) => factor(v, digits)).join(" + ")} = ${fmt(value, digits)}`;
    lines.push(element("code", { textContent: text }));
  }
  const padded = terms.some((t) => t.row < 0 || t.col < 0 || t.row >= input.n || t.col >= input.n);
  setText(
    "lesson-pixel",
    `Output pixel (row ${r}, column ${c}, counting from 0): its ${g.f}×${g.f}` +
      `${channels.length > 1 ? "×3" : ""} window starts at input row ${r * g.s - g.before}, ` +
      `column ${c * g.s - g.before}${padded ? " (partly in the zero padding)" : ""}; ` +
      `${terms.length} products:`,
  );
  $("lesson-sum").replaceChildren(...lines);
  const share = Math.round((100 * Math.abs(value)) / result.scale);
  setText(
    "lesson-shown",
    `The output image shows ${fmt(value, digits)} there: ` +
      (value === 0 ? "white" : `${value < 0 ? "blue" : "red"}, ${share}% of the legend's ±${fmt(result.scale, digits)}`) +
      ".",
  );
  $("lesson-out").setAttribute(
    "aria-label",
    `Output map, ${g.nOut} by ${g.nOut}; chosen pixel row ${r}, column ${c} = ${fmt(value, digits)}. ` +
      "Arrow keys move the chosen pixel.",
  );
  drawNetwork(result, value);
}

// --- from the lesson to the network -----------------------------------------------------------

function drawNetwork(result, c0) {
  const box = $("lesson-network");
  const { kernel, input, g } = result;
  const filters = lesson.explained?.filters;
  if (kernel.learned === null || input.kind !== "gray" || !filters) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const k = kernel.learned;
  const layer = filters.layer;
  const show = (steps, agree = "") => {
    $("lesson-chain").replaceChildren(...steps.map((t) => element("li", { textContent: t })));
    setText("lesson-agree", agree);
  };
  if (radio("lesson-padding") !== "same" || g.s !== 1) {
    show([`Choose padding same and stride 1: that is how ${layer} slides its filters.`]);
    return;
  }
  const { r, c } = lesson.sel;
  const steps = [
    `This output is ${layer}'s own output for filter #${k} before batch normalisation: ` +
      `W·a = ${fmt(c0, 5)} at (row ${r}, column ${c}), the sum above.`,
  ];
  const chain = filters.chain;
  if (!chain) {
    show([...steps, "This model's export does not describe the steps after the convolution."]);
    return;
  }
  const [scale, shift] = [chain.scale[k], chain.shift[k]];
  const z = scale * c0 + shift;
  const act = ACTIVATIONS[chain.activation];
  const a = act.g(z);
  steps.push(
    chain.batch_norm
      ? `z = W·a + b, where batch normalisation's scale and shift take the bias's place: ` +
          `z = ${fmt(scale, 5)} × ${factor(c0, 5)} + ${factor(shift, 5)} = ${fmt(z, 5)} ` +
          "(scale = γ / √(σ² + ε), shift = β − μ·scale, from training)."
      : `z = W·a + b = ${fmt(c0, 5)} + ${factor(shift, 5)} = ${fmt(z, 5)}.`,
  );
  steps.push(`a = g(z), with g = ${act.text}: a = ${fmt(a, 5)}.`);
  const picture = lesson.mapPicture;
  if (!picture) {
    show(steps); // section 3's picture is still being read
    return;
  }
  const drawn = mapPictureValue(picture, k, r, c);
  steps.push(
    `Section 3 draws ${layer}'s map #${k} at that pixel as gray level ${drawn.level} of 255: ` +
      `${fmt(drawn.low, 5)} + ${drawn.level}/255 × (${fmt(drawn.high, 5)} − ${factor(drawn.low, 5)}) = ` +
      `${fmt(drawn.value, 5)}, which is a to within the picture's rounding (±${fmt(drawn.step / 2, 5)}).`,
  );
  // The whole map at once: every pixel's a against section 3's picture.
  let worst = 0;
  for (let i = 0; i < g.nOut; i++) {
    for (let j = 0; j < g.nOut; j++) {
      const mine = act.g(scale * result.out[i * g.nOut + j] + shift);
      worst = Math.max(worst, Math.abs(mine - mapPictureValue(picture, k, i, j).value));
    }
  }
  const half = drawn.step / 2;
  show(
    steps,
    `Over all ${g.nOut ** 2} pixels of map #${k}, this page's a and section 3's picture differ by at most ` +
      `${fmt(worst, 5)}: ${worst <= half + 1e-6 ? "they agree" : "they DISAGREE"} to within the ` +
      `picture's 8-bit rounding (±${fmt(half, 5)}).`,
  );
}

// Reads the first conv layer's feature-map picture (section 3's) back into pixels, so the chain
// above can end at the value that picture shows.
function loadMapPicture(layer) {
  lesson.mapPicture = null;
  const img = new Image();
  img.onload = () => {
    const canvas = document.createElement("canvas");
    [canvas.width, canvas.height] = [img.naturalWidth, img.naturalHeight];
    const pen = canvas.getContext("2d", { willReadFrequently: true });
    pen.drawImage(img, 0, 0);
    const data = pen.getImageData(0, 0, canvas.width, canvas.height).data;
    if (lesson.explained?.layers[0] !== layer) return; // a newer image arrived meanwhile
    lesson.mapPicture = { layer, data, width: canvas.width };
    update({ keepSelection: true });
  };
  img.src = layer.maps.png;
}

// --- several filters: the next layer's input -------------------------------------------------

function drawStack(result) {
  const { input, channels, g } = result;
  const picked = [...document.querySelectorAll('input[name="lesson-stack"]:checked')].map(
    (box) => box.value,
  );
  const figures = [];
  if (g.nOut >= 1) {
    for (const key of picked) {
      const rows = CLASSIC[key][1];
      const kg = geometry(input.n, rows.length, g.s, radio("lesson-padding"));
      if (kg.nOut < 1) continue;
      const kernel = channels.map(() => rows);
      const out = correlate(channels, input.n, kernel, kg);
      const scale = Math.max(...out.map(Math.abs)) || 1;
      const canvas = element("canvas", { className: "stacked" });
      drawGrid(canvas, kg.nOut, (i, j) => rgb(diverging(out[i * kg.nOut + j], scale)));
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", `${CLASSIC[key][0]} output, ${kg.nOut} by ${kg.nOut}`);
      const figure = element("figure", {});
      figure.append(canvas, element("figcaption", { textContent: CLASSIC[key][0] }));
      figures.push(figure);
    }
  }
  $("lesson-stack-maps").replaceChildren(...figures);
  const depth = channels.length;
  const k = figures.length;
  setText(
    "lesson-stack-caption",
    k === 0
      ? "Tick some filters."
      : `${k} filters, each 3×3×${depth} → an output of ` +
          `${g.nOut}×${g.nOut}×${k}: ${k} channels, stacked. The next conv layer's filters are ` +
          `f×f×${k}, one f×f slice per channel, just as a colour image's filters are f×f×3.`,
  );
}

// --- controls ---------------------------------------------------------------------------------

function fillKernelChoices() {
  const menu = $("lesson-kernel");
  const group = (label, entries) => {
    const node = element("optgroup", { label });
    for (const [value, text] of entries) node.append(element("option", { value, textContent: text }));
    return node;
  };
  const classic = Object.keys(CLASSIC).filter((key) => !LINES.includes(key));
  menu.replaceChildren(
    group("Classic", classic.map((key) => [key, CLASSIC[key][0]])),
    group("Line detectors", LINES.map((key) => [key, CLASSIC[key][0]])),
    group("Your own", [["typed", "type a kernel (f×f, f from 1 to 7)"]]),
  );
  menu.value = "sobel-top";
  const stack = $("lesson-stack-choices");
  stack.replaceChildren(
    ...Object.keys(CLASSIC).map((key) => {
      const box = element("input", { type: "checkbox", name: "lesson-stack", value: key });
      box.checked = LINES.includes(key);
      box.id = `lesson-stack-${key}`;
      const label = element("label", { htmlFor: box.id, textContent: CLASSIC[key][0] });
      const span = element("span", { className: "choice" });
      span.append(box, label);
      return span;
    }),
  );
}

function addLearnedChoices(filters) {
  const menu = $("lesson-kernel");
  menu.querySelector("optgroup[data-learned]")?.remove();
  const node = element("optgroup", { label: `Learned by the served model (${filters.layer})` });
  node.dataset.learned = "1";
  filters.kernels.forEach((_, k) => {
    node.append(element("option", { value: `learned:${k}`, textContent: `${filters.layer} filter #${k}` }));
  });
  menu.append(node);
}

function loadTextbook(key) {
  const example = TEXTBOOK[key];
  $("lesson-input").value = key;
  $("lesson-kernel").value = "typed";
  $("lesson-typed").value = example.kernel;
  document.querySelector('input[name="lesson-padding"][value="valid"]').checked = true;
  document.querySelector(`input[name="lesson-stride"][value="${example.stride}"]`).checked = true;
  $("lesson-pool").value = "0";
  syncControls();
  update();
  setText("lesson-textbook-note", `Textbook example, ${example.label}: ${example.note}`);
}

function syncControls() {
  const typed = $("lesson-kernel").value === "typed";
  $("lesson-typed-box").hidden = !typed;
  const colour = $("lesson-input").value === "colour";
  $("lesson-mix").hidden = !colour;
  if (!($("lesson-input").value in TEXTBOOK)) setText("lesson-textbook-note", "");
}

// Hovering explores; a click or tap pins the pixel (so the pointer can go and read the sum), and
// a click on the pinned pixel lets hovering explore again. The arrow keys move a pinned pixel.
const pinned = { sel: false, poolSel: false };

function moveSelection(event, key, size) {
  const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
  if (!(event.key in moves) || !lesson[key]) return;
  event.preventDefault();
  const [dr, dc] = moves[event.key];
  const n = size();
  pinned[key] = true;
  lesson[key] = {
    r: Math.min(n - 1, Math.max(0, lesson[key].r + dr)),
    c: Math.min(n - 1, Math.max(0, lesson[key].c + dc)),
  };
  redrawSelection();
}

function pointAt(event, canvas, key) {
  const box = canvas.getBoundingClientRect();
  const n = Number(canvas.dataset.cells);
  const c = Math.floor(((event.clientX - box.left) / box.width) * n);
  const r = Math.floor(((event.clientY - box.top) / box.height) * n);
  if (r < 0 || c < 0 || r >= n || c >= n) return;
  const same = lesson[key] && lesson[key].r === r && lesson[key].c === c;
  if (event.type === "pointerdown") {
    pinned[key] = !(same && pinned[key]);
  } else if (pinned[key]) {
    return;
  }
  if (same) return;
  lesson[key] = { r, c };
  redrawSelection();
}

function wire() {
  fillKernelChoices();
  const changed = () => {
    syncControls();
    update();
  };
  for (const id of ["lesson-input", "lesson-kernel", "lesson-mix-r", "lesson-mix-g", "lesson-mix-b"]) {
    $(id).addEventListener("change", changed);
  }
  for (const id of ["lesson-pool", "lesson-pool-stride"]) {
    $(id).addEventListener("change", () => update({ keepSelection: true }));
  }
  $("lesson-typed").addEventListener("input", () => update({ keepSelection: true }));
  for (const name of ["lesson-padding", "lesson-stride"]) {
    for (const box of document.querySelectorAll(`input[name="${name}"]`)) {
      box.addEventListener("change", () => update({ keepSelection: true }));
    }
  }
  $("lesson-stack-choices").addEventListener("change", () => update({ keepSelection: true }));
  for (const key of Object.keys(TEXTBOOK)) {
    $(`lesson-load-${key}`).addEventListener("click", () => loadTextbook(key));
  }
  const out = $("lesson-out");
  const pooled = $("lesson-pool-out");
  for (const type of ["pointermove", "pointerdown"]) {
    out.addEventListener(type, (event) => pointAt(event, out, "sel"));
    pooled.addEventListener(type, (event) => pointAt(event, pooled, "poolSel"));
  }
  out.addEventListener("keydown", (event) => moveSelection(event, "sel", () => lesson.result.g.nOut));
  pooled.addEventListener("keydown", (event) => moveSelection(event, "poolSel", () => lesson.result.pool.n));
}

// --- what app.js calls --------------------------------------------------------------------------

// Once, when the page loads: the controls, and a textbook example to work before any image.
export function startLesson() {
  wire();
  loadTextbook("strided");
}

// The person's image, each time sections 2 and 3 draw a new /explain answer.
export function workOnImage(result) {
  lesson.explained = result;
  addLearnedChoices(result.filters);
  const gray = $("lesson-input").querySelector('option[value="gray"]');
  const colour = $("lesson-input").querySelector('option[value="colour"]');
  gray.disabled = false;
  gray.textContent = "your image: the 28×28 the model saw";
  colour.disabled = !result.colour;
  colour.textContent = result.colour
    ? "your image in colour: 28×28×3 (R, G, B)"
    : "your image in colour (upload a colour image)";
  if ($("lesson-input").value in TEXTBOOK) {
    // From a textbook example to the person's image: start from the classic first example.
    $("lesson-kernel").value = "sobel-top";
    document.querySelector('input[name="lesson-padding"][value="same"]').checked = true;
    document.querySelector('input[name="lesson-stride"][value="1"]').checked = true;
  }
  $("lesson-input").value = "gray";
  syncControls();
  update();
  loadMapPicture(result.layers[0]);
}
