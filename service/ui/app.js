// The /ui page's entry module (index.html loads it; ES modules, no build step, no dependencies).
// It calls the service's own API: GET /metadata, GET /samples and POST /explain (multipart
// `image`, `invert`), the same image path /classify takes, and POST /feedback with the answer's
// prediction_id. Paths are relative to /ui/ so the page works behind a prefix.
// A service started with an API token (docs/serving.md) answers /explain 401 until the page
// sends `Authorization: Bearer <token>`: the page then asks for the token once and keeps it in
// sessionStorage (this tab only, gone when it closes). Section 4 is lesson.js's.
// Past 300 lines: input, /explain and its drawing, the token and the correction share the page's
// state; what is pure is in lesson-math.js and dom.js.
import { $, element } from "./dom.js";
import { startLesson, workOnImage } from "./lesson.js";

const api = (path) => new URL(`../${path}`, document.baseURI).href;
const BRUSH = 22; // canvas pixels (of 280): about 2 pixels wide at 28x28, like Fashion-MNIST strokes

let latest = 0; // the newest request: answers to older ones are dropped
let samples = null;
const TOKEN_KEY = "fashion-mnist-api-token";
let pending = null; // the image a 401 stopped: explained again once a token is given

function show(node, visible) {
  node.hidden = !visible;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  $("error").textContent = text;
  show($("error"), Boolean(text));
}

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

// A grid image's own size, so the page keeps its aspect ratio while CSS scales it up.
function sizeGrid(img, grid) {
  img.width = grid.cols * (grid.tile + grid.gap) - grid.gap;
  img.height = grid.rows * (grid.tile + grid.gap) - grid.gap;
}

function authorization() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function askForToken(message) {
  showError(message);
  show($("token-form"), true);
  $("token").focus();
}

async function loadMetadata() {
  try {
    const response = await fetch(api("metadata"));
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const meta = await response.json();
    $("model").textContent =
      `Served model: ${meta.model.name}, version ${meta.model.version} · ` +
      `test accuracy ${percent(meta.test_accuracy)} · ${meta.runtime}`;
  } catch (err) {
    $("model").textContent = `Could not read /metadata: ${err.message}`;
  }
}

async function explain(blob, filename, source) {
  const request = ++latest;
  const form = new FormData();
  form.append("image", blob, filename);
  form.append("invert", $("invert").value);
  setStatus(`Explaining ${source}…`);
  showError("");
  let response, body;
  try {
    response = await fetch(api("explain"), {
      method: "POST",
      body: form,
      headers: authorization(),
    });
    body = await response.json();
  } catch (err) {
    if (request !== latest) return;
    setStatus("");
    showError(`The service did not answer: ${err.message}`);
    return;
  }
  if (request !== latest) return;
  if (response.status === 401) {
    setStatus("");
    show($("result"), false);
    show($("inside"), false);
    pending = [blob, filename, source];
    const refused = sessionStorage.getItem(TOKEN_KEY) !== null;
    sessionStorage.removeItem(TOKEN_KEY);
    const error = body.error || "HTTP 401";
    askForToken(refused ? `The token was refused: ${error}` : error);
    return;
  }
  if (!response.ok) {
    setStatus("");
    show($("result"), false);
    show($("inside"), false);
    showError(`${source}: ${body.error || `HTTP ${response.status}`}`);
    return;
  }
  render(body);
  setStatus(`Explained ${source}.`);
}

function render(result) {
  $("seen").src = result.image;
  const how = $("invert").value === "auto" ? "auto" : `invert=${$("invert").value}`;
  $("seen-caption").textContent =
    `28×28 after grayscale and fitting; ${result.inverted ? "inverted" : "not inverted"} (${how})`;
  $("top-class").textContent = result.class_name;
  $("top-confidence").textContent = percent(result.confidence);
  const list = $("probabilities");
  list.replaceChildren(
    ...Object.entries(result.probabilities).map(([name, p]) => {
      const bar = element("span", { className: "bar" }, [element("span")]);
      bar.firstChild.style.width = `${(100 * p).toFixed(2)}%`;
      const item = element("li", {}, [
        element("span", { className: "name", textContent: name }),
        bar,
        element("span", { className: "value", textContent: percent(p) }),
      ]);
      item.dataset.probability = String(p);
      if (name === result.class_name) item.classList.add("best");
      return item;
    }),
  );

  const filters = result.filters;
  sizeGrid($("filters-image"), filters.grid);
  $("filters-image").src = filters.grid.png;
  $("filters-caption").textContent =
    `${filters.layer}'s ${filters.count} learned ${filters.f}×${filters.f} filters ` +
    `(blue negative, white 0, red positive, up to ±${filters.scale.toFixed(3)}): ` +
    "first layers learn edge and blob detectors.";

  $("layers").replaceChildren(
    ...result.layers.map((layer) => {
      const img = element("img", {
        className: "maps",
        alt: `${layer.layer}: ${layer.channels} feature maps of ${layer.n_out}×${layer.n_out}`,
      });
      sizeGrid(img, layer.maps);
      img.src = layer.maps.png;
      const shown = layer.output === layer.layer ? "" : `, shown after ${layer.output}`;
      const caption = element("figcaption", {}, [
        element("strong", { textContent: layer.layer }),
        ` (${layer.kind}${shown}): n = ${layer.n_in}, f = ${layer.f}, p = ${layer.p}, ` +
          `s = ${layer.s} → `,
        element("code", { textContent: layer.formula }),
        `; ${layer.channels} channels of ${layer.n_out}×${layer.n_out}`,
      ]);
      return element("figure", { className: "layer" }, [img, caption]);
    }),
  );
  offerFeedback(result);
  show($("result"), true);
  show($("inside"), true);
  workOnImage(result); // section 4 works on the same answer
}

// --- "Is this right?": a correction (or a confirmation) of the answer shown, to POST /feedback ---
let answered = null; // the answer the buttons correct: its prediction_id and class

function offerFeedback(result) {
  answered = result;
  $("feedback-status").textContent = "";
  $("feedback-classes").replaceChildren(
    ...Object.keys(result.probabilities).map((name, id) => {
      const button = element("button", { type: "button", textContent: name });
      button.dataset.classId = String(id);
      if (name === result.class_name) button.classList.add("predicted");
      button.addEventListener("click", () => sendFeedback(id, name));
      return button;
    }),
  );
}

async function sendFeedback(classId, name) {
  const result = answered;
  const buttons = [...$("feedback-classes").querySelectorAll("button")];
  for (const button of buttons) button.disabled = true;
  $("feedback-status").textContent = `Sending “${name}”…`;
  let response, body;
  try {
    response = await fetch(api("feedback"), {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authorization() },
      body: JSON.stringify({
        items: [{ prediction_id: result.prediction_id, label: classId }],
        source: "page",
      }),
    });
    body = await response.json();
  } catch (err) {
    body = { error: `the service did not answer: ${err.message}` };
  }
  if (result !== answered) return; // a new image came meanwhile
  if (response && response.status === 401) {
    for (const button of buttons) button.disabled = false;
    $("feedback-status").textContent = "";
    askForToken(body.error || "HTTP 401");
    return;
  }
  if (!response || !response.ok) {
    for (const button of buttons) button.disabled = false;
    $("feedback-status").textContent = `Not stored: ${body.error || `HTTP ${response.status}`}`;
    return;
  }
  const stored = body.stored[0];
  for (const button of buttons) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.classId) === classId));
  }
  $("feedback-status").textContent = stored.agrees
    ? `Stored: “${stored.label_name}”, the model was right (correction ${stored.id.slice(0, 8)}).`
    : `Stored: “${stored.label_name}”; the model said “${stored.predicted_name}” ` +
      `(correction ${stored.id.slice(0, 8)}). It joins the data once curated.`;
}

// --- the API token, when the service asks for one ---
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault(); // handled here: nothing is submitted anywhere
  const token = $("token").value.trim();
  if (!/^[\x21-\x7e]+$/.test(token)) {
    askForToken("Paste the token: printable characters, no spaces.");
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  show($("token-form"), false);
  showError("");
  if (pending) {
    const [blob, filename, source] = pending;
    pending = null;
    explain(blob, filename, source);
  }
});

// --- file choice and drag and drop ---
$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) explain(file, file.name, file.name);
});

const drop = $("drop");
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("dragging");
  });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("dragging"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer.files[0];
  if (file) explain(file, file.name, file.name);
});
// A file dropped beside the zone must not replace the page.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

// --- a random test image shipped with the model ---
function dataUrlBlob(url) {
  const [head, data] = url.split(",");
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: head.slice(5).split(";")[0] });
}

$("random").addEventListener("click", async () => {
  try {
    if (samples === null) {
      const response = await fetch(api("samples"));
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      samples = (await response.json()).samples;
    }
  } catch (err) {
    showError(`Could not load the test images: ${err.message}`);
    return;
  }
  if (samples.length === 0) {
    showError("The served model ships no test images (it has no explainer).");
    return;
  }
  const sample = samples[Math.floor(Math.random() * samples.length)];
  explain(
    dataUrlBlob(sample.image),
    `test-${sample.index}.png`,
    `test image #${sample.index} (labelled ${sample.class_name})`,
  );
});

// --- drawing ---
const canvas = $("canvas");
const pen = canvas.getContext("2d");
let drawing = false;
let drawn = false;

function clearCanvas() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, canvas.width, canvas.height);
  drawn = false;
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return [
    ((event.clientX - box.left) * canvas.width) / box.width,
    ((event.clientY - box.top) * canvas.height) / box.height,
  ];
}

function explainDrawing() {
  canvas.toBlob((blob) => explain(blob, "drawing.png", "the drawing"), "image/png");
}

canvas.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId);
  drawing = true;
  drawn = true;
  pen.strokeStyle = "#fff";
  pen.lineWidth = BRUSH;
  pen.lineCap = "round";
  pen.lineJoin = "round";
  const [x, y] = point(event);
  // A dot where the pen lands: a tap draws too (a zero-length line would draw nothing).
  pen.fillStyle = "#fff";
  pen.beginPath();
  pen.arc(x, y, BRUSH / 2, 0, 2 * Math.PI);
  pen.fill();
  pen.beginPath();
  pen.moveTo(x, y);
});
canvas.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const [x, y] = point(event);
  pen.lineTo(x, y);
  pen.stroke();
});
for (const type of ["pointerup", "pointercancel"]) {
  canvas.addEventListener(type, () => {
    if (!drawing) return;
    drawing = false;
    explainDrawing();
  });
}
$("explain-drawing").addEventListener("click", () => {
  if (!drawn) {
    showError("Draw something first (light strokes on the dark square).");
    return;
  }
  explainDrawing();
});
$("clear").addEventListener("click", clearCanvas);

clearCanvas();
startLesson();
loadMetadata();
