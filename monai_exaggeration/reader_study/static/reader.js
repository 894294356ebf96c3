"use strict";
// Reading app: one case at a time, image first, then the arm's explanation; every answer saved at once.
const $ = (id) => document.getElementById(id);
// A case whose arm asks the real-versus-generated question starts with that image alone ("choice" stage):
// it may be the case's own source, so the case's images are loaded only once the choice is confirmed.
const state = { study: null, answers: {}, index: 0, data: null, frames: [], base: null, choice: null, frame: 0,
  timer: null, revealed: false, stage: "case", picked: {} };

async function api(method, url, body) {
  const options = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) { options.body = JSON.stringify(body); options.headers["Content-Type"] = "application/json"; }
  const response = await fetch(url, options);
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(response.status + ": " + detail);
  }
  return response.json();
}

// asked on the image alone, before the explanation: the server's rule (phase "before" or an id ending in _before)
const isBefore = (q) => q.phase === "before" || q.id.endsWith("_before");

function questionsFor(arm) {
  return state.study.questions.filter((q) => !q.arms || q.arms.length === 0 || q.arms.includes(arm));
}

function isComplete(item) {
  const given = state.answers[item.case_id] || {};
  return questionsFor(item.arm).every((q) => q.id in given);
}

function renderCaseList() {
  const nav = $("cases");
  nav.innerHTML = "";
  state.study.cases.forEach((item, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = (i + 1) + ". " + item.case_id;
    button.dataset.caseId = item.case_id;
    if (isComplete(item)) button.classList.add("complete");
    if (i === state.index) button.classList.add("current");
    button.addEventListener("click", () => openCase(i));
    nav.appendChild(button);
  });
  const done = state.study.cases.filter(isComplete).length;
  $("progress").textContent = done + " of " + state.study.cases.length + " cases complete";
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("could not load " + url));
    image.src = url;
  });
}

function pixels(image) {
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  return context.getImageData(0, 0, canvas.width, canvas.height);
}

function draw() {
  const inChoice = state.stage === "choice";
  const source = inChoice ? state.choice : state.revealed && state.frames.length ? state.frames[state.frame] : state.base;
  if (!source) return;
  const width = Number($("window").value), level = Number($("level").value);
  const low = level - width / 2, scale = 255 / width;
  const out = new ImageData(source.width, source.height);
  for (let i = 0; i < source.data.length; i += 4) {
    const v = Math.max(0, Math.min(255, (source.data[i] - low) * scale));
    out.data[i] = out.data[i + 1] = out.data[i + 2] = v; out.data[i + 3] = 255;
  }
  const screen = $("screen");
  screen.width = source.width; screen.height = source.height;
  screen.getContext("2d").putImageData(out, 0, 0);
  const showSeries = !inChoice && state.revealed && state.frames.length;
  $("series-controls").hidden = !showSeries;
  if (showSeries) {
    $("slider").value = state.frame;
    const score = state.data.scores ? "  ·  classifier score " + state.data.scores[state.frame].toFixed(2) : "";
    $("step-label").textContent = "frame " + (state.frame + 1) + " / " + state.frames.length;
    $("frame-label").textContent = "exaggeration series" + score;
  } else {
    $("frame-label").textContent = inChoice ? "real or generated?" : "image";
  }
}

function step(delta) {
  if (state.stage === "choice" || !state.revealed || !state.frames.length) return;
  state.frame = Math.max(0, Math.min(state.frames.length - 1, state.frame + delta));
  draw();
}

function togglePlay() {
  if (!state.timer && (state.stage === "choice" || !state.revealed || !state.frames.length)) return;
  if (state.timer) { clearInterval(state.timer); state.timer = null; $("play").textContent = "▶ play"; return; }
  $("play").textContent = "❚❚ pause";
  state.timer = setInterval(() => { state.frame = (state.frame + 1) % state.frames.length; draw(); }, 400);
}

function stopPlay() { if (state.timer) togglePlay(); }

async function save(question, value) {
  const caseId = state.data.case_id;
  $("saved").textContent = "saving…";
  $("saved").classList.remove("error");
  try {
    const result = await api("PUT", "/api/answers/" + encodeURIComponent(caseId) + "/" + encodeURIComponent(question.id), { value });
    (state.answers[caseId] = state.answers[caseId] || {})[question.id] = result.value;
    $("saved").textContent = "saved";
    renderCaseList();
  } catch (error) {
    $("saved").textContent = "not saved: " + error.message;
    $("saved").classList.add("error");
  }
}

function field(question, given) {
  const set = document.createElement("fieldset");
  set.dataset.question = question.id;
  const legend = document.createElement("legend");
  legend.textContent = question.prompt;
  set.appendChild(legend);
  const name = "q_" + question.id;
  const radio = (value, text, checked) => {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "radio"; input.name = name; input.value = String(value); input.checked = checked;
    input.addEventListener("change", () => (question.type === "forced_choice" ? pick(question, value) : save(question, value)));
    label.append(input, " " + text);
    set.appendChild(label);
  };
  if (question.type === "likert") {
    const low = question.min ?? 1, high = question.max ?? 5, labels = question.labels || [];
    for (let v = low; v <= high; v++) radio(v, v + (labels[v - low] ? " " + labels[v - low] : ""), given === v);
  } else if (question.type === "yes_no") {
    radio("yes", "yes", given === "yes"); radio("no", "no", given === "no");
  } else if (question.type === "forced_choice") {
    radio("real", "real", given === "real"); radio("generated", "generated", given === "generated");
  } else if (question.type === "choice" && question.multiple) {
    const chosen = new Set(Array.isArray(given) ? given : []);
    for (const option of question.options) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "checkbox"; input.name = name; input.value = option; input.checked = chosen.has(option);
      input.addEventListener("change", () => {
        const values = [...set.querySelectorAll("input:checked")].map((box) => box.value);
        if (values.length) save(question, values);
      });
      label.append(input, " " + option);
      set.appendChild(label);
    }
  } else if (question.type === "choice") {
    for (const option of question.options) radio(option, option, given === option);
  } else if (question.type === "text") {
    const area = document.createElement("textarea");
    area.name = name; area.value = given ?? ""; area.maxLength = 4000;
    let pending = null;
    const flush = () => { clearTimeout(pending); pending = null; if (area.value !== (state.answers[state.data.case_id] || {})[question.id]) save(question, area.value); };
    area.addEventListener("input", () => { clearTimeout(pending); pending = setTimeout(flush, 800); });
    area.addEventListener("change", flush);
    set.appendChild(area);
  }
  return set;
}

function choiceQuestions() {
  return state.data.forced_choice ? state.data.questions.filter((q) => q.type === "forced_choice") : [];
}

function pick(question, value) {
  // a forced choice is only a selection until confirmed: the stored answer is final
  state.picked[question.id] = value;
  $("confirm-choice").disabled = !choiceQuestions().every((q) => q.id in state.picked);
}

async function confirmChoice() {
  $("confirm-choice").disabled = true;
  for (const question of choiceQuestions()) await save(question, state.picked[question.id]);
  const given = state.answers[state.data.case_id] || {};
  if (choiceQuestions().every((q) => q.id in given)) await showCase();
  else $("confirm-choice").disabled = false;
}

function renderForms() {
  const given = state.answers[state.data.case_id] || {};
  const before = $("before-form"), after = $("after-form"), choice = $("choice-form");
  before.innerHTML = ""; after.innerHTML = ""; choice.innerHTML = "";
  for (const question of state.data.questions) {
    if (question.type === "forced_choice" && state.data.forced_choice) choice.appendChild(field(question, given[question.id]));
    else if (question.type !== "forced_choice") (isBefore(question) ? before : after).appendChild(field(question, given[question.id]));
  }
  for (const set of choice.querySelectorAll("fieldset")) set.disabled = state.stage !== "choice";
}

function lockBefore() {
  // answers given on the image alone are final once the explanation has been seen (the server refuses a change: 409)
  for (const set of $("before-form").querySelectorAll("fieldset")) set.disabled = state.revealed;
}

async function loadExplanation() {
  // the server records that this reader has seen the case's explanation, then sends it (frames, scores, saliency)
  const caseId = state.data.case_id;
  const explanation = await api("POST", "/api/cases/" + encodeURIComponent(caseId) + "/explanation", {});
  if (!state.data || state.data.case_id !== caseId) return false;  // another case was opened meanwhile
  Object.assign(state.data, explanation);
  const frames = state.data.frames ? (await Promise.all(state.data.frames.map(loadImage))).map(pixels) : [];
  if (!state.data || state.data.case_id !== caseId) return false;
  state.frames = frames;
  state.frame = 0;
  $("slider").max = Math.max(0, state.frames.length - 1);
  if (state.data.saliency) $("saliency").src = state.data.saliency;
  return true;
}

function showRevealed() {
  const hasAfter = state.data.questions.some((q) => q.type !== "forced_choice" && !isBefore(q));
  lockBefore();
  $("after").hidden = !state.revealed || !hasAfter;
  $("reveal").hidden = state.revealed;
  $("saliency-panel").hidden = !(state.revealed && state.data.saliency);
  draw();
}

async function reveal() {
  $("reveal").disabled = true;
  try {
    if (!(await loadExplanation())) return;
    state.revealed = true;
    showRevealed();
  } catch (error) {
    $("saved").textContent = "could not show the explanation: " + error.message;
    $("saved").classList.add("error");
  } finally {
    $("reveal").disabled = false;
  }
}

async function openCase(index) {
  stopPlay();
  // nothing of the previous case (its explanation above all) stays on screen while this one loads
  state.revealed = false; state.frames = [];
  for (const id of ["series-controls", "saliency-panel", "after"]) $(id).hidden = true;
  state.index = index;
  const item = state.study.cases[index];
  $("done").hidden = true; $("case").hidden = false; $("saved").textContent = "";
  state.data = await api("GET", "/api/cases/" + encodeURIComponent(item.case_id));
  $("case-title").textContent = "Case " + (index + 1) + " of " + state.study.cases.length + " (" + item.case_id + ")";
  state.base = null; state.frames = []; state.choice = null; state.picked = {}; state.frame = 0;
  const given = state.answers[item.case_id] || {};
  state.stage = choiceQuestions().some((q) => !(q.id in given)) ? "choice" : "case";
  $("prev").disabled = index === 0;
  $("next").disabled = index === state.study.cases.length - 1;
  if (state.stage === "choice") {
    state.choice = pixels(await loadImage(state.data.forced_choice));
    for (const id of ["before", "after", "saliency-panel"]) $(id).hidden = true;
    $("choice-step").hidden = false;
    $("confirm-choice").disabled = true;
    $("confirm-choice").hidden = false;
    $("choice-note").textContent = "Judge this image on its own; the case's images follow once you confirm. Your answer is final.";
    renderForms();
    renderCaseList();
    draw();
    return;
  }
  await showCase();
}

async function showCase() {
  // the case itself: its image, then the arm's explanation
  const item = state.study.cases[state.index];
  state.stage = "case";
  // the explanation's images are fetched only when it is shown: the server records that moment
  state.base = pixels(await loadImage(state.data.image));
  state.frames = [];
  state.frame = 0;
  $("saliency").removeAttribute("src");
  $("before").hidden = false;
  $("choice-step").hidden = choiceQuestions().length === 0;
  $("confirm-choice").hidden = true;
  $("choice-note").textContent = "Your judgement of the image shown alone (final).";
  const assessed = state.data.questions.filter((q) => q.type !== "forced_choice");
  const explains = (state.data.frames || []).length > 0 || Boolean(state.data.saliency);
  $("reveal").textContent = explains ? "Show the explanation" : "Continue";
  $("after-title").textContent = explains ? "With the explanation (" + state.data.arm_label + ")" : "Your assessment";
  const given = state.answers[item.case_id] || {};
  const answeredAfter = assessed.some((q) => !isBefore(q) && q.id in given);
  // the server knows whether this reader has seen the explanation (also on another browser)
  state.revealed = Boolean(state.data.explained) || answeredAfter;
  if (state.revealed && !(await loadExplanation())) return;
  renderForms();
  renderCaseList();
  showRevealed();
}

document.addEventListener("keydown", (event) => {
  const tag = (event.target.tagName || "").toLowerCase();
  if (tag === "textarea" || (tag === "input" && event.target.type === "text")) return;
  if (event.key === "ArrowRight") { step(1); event.preventDefault(); }
  else if (event.key === "ArrowLeft") { step(-1); event.preventDefault(); }
  else if (event.key === " ") { togglePlay(); event.preventDefault(); }
});

async function main() {
  try {
    state.study = await api("GET", "/api/study");
  } catch (error) {
    document.body.innerHTML = "<main class='narrow'><h1>Reader study</h1><p class='error'>" +
      "Could not open the study (" + error.message.replace(/</g, "&lt;") + "). Open your personal link again.</p></main>";
    return;
  }
  state.answers = state.study.answers || {};
  document.title = state.study.title;
  $("title").textContent = state.study.title;
  $("who").textContent = "reader " + state.study.reader_id;
  $("reveal").addEventListener("click", reveal);
  $("confirm-choice").addEventListener("click", confirmChoice);
  $("prev").addEventListener("click", () => openCase(Math.max(0, state.index - 1)));
  $("next").addEventListener("click", () => openCase(Math.min(state.study.cases.length - 1, state.index + 1)));
  $("play").addEventListener("click", togglePlay);
  $("slider").addEventListener("input", () => { state.frame = Number($("slider").value); draw(); });
  for (const id of ["window", "level"]) $(id).addEventListener("input", draw);
  $("wl-reset").addEventListener("click", () => { $("window").value = 255; $("level").value = 128; draw(); });
  const first = state.study.cases.findIndex((item) => !isComplete(item));
  if (first === -1 && state.study.cases.length) { renderCaseList(); $("case").hidden = true; $("done").hidden = false; state.index = -1; return; }
  await openCase(Math.max(0, first));
}

main();
