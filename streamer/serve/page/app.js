// streamer studio: the page. No build step: plain JavaScript the browser runs as it is.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
let pc = null, peer = null, target = "server", localStream = null, styleIds = "", current = {};
let hasSource = true;

function withToken(url) {
  return token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["X-Streamer-Token"] = token;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  const kind = response.headers.get("Content-Type") || "";
  if (kind.includes("application/json")) body = await response.json();
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body === null ? response : body;
}

function say(text, ok = false) {
  const m = $("message");
  m.textContent = text;
  m.className = ok ? "ok" : "";
}

// -- the stream ----------------------------------------------------------------------------------
function waitForIce(connection) {
  if (connection.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (connection.iceGatheringState === "complete") resolve(); };
    connection.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000);
  });
}

function hangUp() {
  if (peer) {
    const blob = new Blob([JSON.stringify({ peer })], { type: "application/json" });
    navigator.sendBeacon(withToken("/api/bye"), blob);
  }
  if (pc) pc.close();
  if (localStream) localStream.getTracks().forEach((t) => t.stop());
  pc = null; peer = null; localStream = null;
}

// keepMessage: a refusal just said (the camera was busy) stays on the page while the server's stream returns
async function connect(mode, keepMessage = false) {
  hangUp();
  for (const name of Object.keys(pending)) delete pending[name];
  $("waiting").hidden = false;
  $("waiting").textContent = mode === "camera" ? "Starting your camera…" : "Waiting for the stream…";
  const connection = new RTCPeerConnection({ iceServers: [] });
  pc = connection;
  connection.ontrack = (event) => {
    const stream = event.streams[0] || new MediaStream([event.track]);
    $("video").srcObject = stream;
  };
  try {
    if (mode === "camera") {
      localStream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
      localStream.getTracks().forEach((t) => connection.addTrack(t, localStream));
    } else {
      connection.addTransceiver("video", { direction: "recvonly" });
    }
    await connection.setLocalDescription(await connection.createOffer());
    await waitForIce(connection);
    const answer = await api("/api/offer", {
      method: "POST", json: { sdp: connection.localDescription.sdp, type: "offer", mode },
    });
    if (pc !== connection) return;
    peer = answer.peer;
    target = answer.session || "server";
    await connection.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    if (mode === "camera") say("Your camera is stylized on the server.", true);
    else if (!keepMessage) say("", true);
  } catch (error) {
    if (pc === connection) hangUp();
    $("waiting").textContent = "No stream.";
    if (mode === "camera") {
      $("camera").checked = false;
      target = "server";
      say(`Camera: ${error.message}`);
      if (hasSource) setTimeout(() => connect("server", true), 0);
    } else {
      say(`Stream: ${error.message}`);
    }
  }
}

$("video").addEventListener("playing", () => { $("waiting").hidden = true; });

// -- figures and controls ----------------------------------------------------------------------
// A control the user just changed keeps its value until the server's state shows it (or 3 s pass): a state
// answered before the change arrived must not flip the box back under the user's hand.
const pending = {};
function changed(name, value) { pending[name] = { value, until: Date.now() + 3000 }; }
function settled(name, value) {
  const p = pending[name];
  if (p && p.value !== value && Date.now() < p.until) return false;
  delete pending[name];
  return true;
}

function showState(body) {
  const info = body.info;
  hasSource = body.has_source;
  $("info").textContent = `source: ${target === "server" ? info.source : "your camera"} · ${info.device}` +
    ` · browser cameras ${body.cameras}/${body.camera_limit}`;
  $("stat-model").textContent = info.model;
  $("stat-engine").textContent = info.engine || "–";
  const s = body.session;
  if (!s) return;
  current = s;
  $("stat-fps").textContent = `${s.engine_fps.toFixed(1)} fps`;
  $("stat-latency").textContent = `${s.latency_ms} ms`;
  $("stat-size").textContent = s.bypass ? "bypass" : `${s.size || "capture"}${s.size_auto ? (s.size_pinned ? " (pinned)" : " (auto)") : ""} of ${s.capture}`;
  $("stat-viewers").textContent = String(s.viewers);
  if (document.activeElement !== $("alpha") && settled("alpha", s.alpha)) {
    $("alpha").value = s.alpha;
    $("alpha-value").textContent = s.alpha.toFixed(2);
  }
  for (const flag of ["keep_color", "temporal", "motion", "bypass"]) {
    if (settled(flag, s[flag])) $(flag).checked = s[flag];
  }
  const select = $("size");
  const wanted = ["auto", ...s.sizes.map(String)].join(",");
  if (select.dataset.sizes !== wanted) {
    select.dataset.sizes = wanted;
    select.innerHTML = "";
    const choices = s.size_auto ? ["auto", ...s.sizes] : [s.size || "capture"];
    for (const c of choices) {
      const option = document.createElement("option");
      option.value = String(c);
      option.textContent = c === "auto" ? "auto" : `${c} px`;
      select.appendChild(option);
    }
    select.disabled = !s.size_auto;
  }
  // bypass has no working size (0): the choice stays as it was, for when bypass ends
  if (document.activeElement !== select && !s.bypass) {
    select.value = s.size_auto && !s.size_pinned ? "auto" : String(s.size || "capture");
  }
  for (const button of document.querySelectorAll(".style")) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.index) === s.style));
  }
  if (body.recording) showRecording(body.recording);
  if (s.error) say(`The session stopped: ${s.error}`);
  else if (!s.running && target === "server") say("The server's source has ended.");
}

async function poll() {
  try {
    const body = await api(`/api/state?target=${encodeURIComponent(target)}`);
    showState(body);
    const ids = body.style_ids.join(",");
    if (ids !== styleIds) await loadStyles();
  } catch (error) {
    if (target !== "server" && /no such camera session/.test(error.message)) {
      say("Your camera session ended.");
      $("camera").checked = false;
      target = "server";
      if (hasSource) connect("server", true);
    }
  }
  setTimeout(poll, 700);
}

async function send(params) {
  try {
    await api("/api/control", { method: "POST", json: Object.assign({ target }, params) });
  } catch (error) {
    say(error.message);
  }
}

$("alpha").addEventListener("input", () => {
  $("alpha-value").textContent = Number($("alpha").value).toFixed(2);
  changed("alpha", Number($("alpha").value));
  send({ alpha: Number($("alpha").value) });
});
for (const flag of ["keep_color", "temporal", "motion", "bypass"]) {
  $(flag).addEventListener("change", () => {
    changed(flag, $(flag).checked);
    send({ [flag]: $(flag).checked });
  });
}
$("size").addEventListener("change", () => {
  const v = $("size").value;
  send({ size: v === "auto" ? "auto" : Number(v) });
});
$("camera").addEventListener("change", () => connect($("camera").checked ? "camera" : "server"));

async function snapshot() {
  try {
    const response = await api(`/api/snapshot.png?target=${encodeURIComponent(target)}`);
    const url = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
    a.href = url; a.download = `streamer-${stamp}.png`;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 5000);
  } catch (error) {
    say(`Snapshot: ${error.message}`);
  }
}
$("snapshot").addEventListener("click", snapshot);

// -- recordings: made on the server (one at a time), downloaded from it when stopped ----------------
function showRecording(r) {
  const button = $("record");
  button.textContent = r.running ? "Stop recording" : "Start recording";
  button.setAttribute("aria-pressed", String(r.running));
  $("recording-status").textContent = r.running
    ? `Recording (${r.target === "server" ? "the server's source" : "a browser camera"}): ${r.seconds.toFixed(0)} s, ${r.frames} frames`
    : "";
  const link = $("download");
  if (!r.running && r.last) {
    link.href = withToken(`/api/recordings/${encodeURIComponent(r.last.id)}`);
    link.textContent = `Download the recording (mp4, ${r.last.frames} frames)`;
  }
  link.hidden = r.running || !r.last;
}

async function toggleRecording() {
  const button = $("record");
  button.disabled = true;
  try {
    if (button.getAttribute("aria-pressed") === "true") {
      const done = await api("/api/recordings/stop", { method: "POST", json: {} });
      say(done.id ? `Recording stopped: ${done.frames} frames, ready to download.` : "Nothing was recorded: no frame came.", true);
    } else {
      await api("/api/recordings", { method: "POST", json: { target } });
      say("Recording on the server…", true);
    }
    showRecording((await api("/api/state?target=none")).recording);
  } catch (error) {
    say(`Recording: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}
$("record").addEventListener("click", toggleRecording);

function toggleHelp() {
  const help = $("help");
  help.hidden = !help.hidden;
  $("help-button").setAttribute("aria-expanded", String(!help.hidden));
}
$("help-button").addEventListener("click", toggleHelp);

// the window's keys
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const t = event.target;
  const typing = t instanceof HTMLSelectElement || (t instanceof HTMLInputElement && t.type !== "range");
  if (typing || ((t instanceof HTMLButtonElement || t instanceof HTMLInputElement) && (event.key === " " || event.key === "Enter"))) return;
  let key = event.key === " " ? "space" : event.key.length === 1 ? event.key.toLowerCase() : null;
  if (key === null) return;
  if (key === "s") snapshot();
  else if (key === "f") { if (document.fullscreenElement) document.exitFullscreen(); else $("video").requestFullscreen(); }
  else if (key === "h") toggleHelp();
  else if ("np123456789+=-_cmu[]".includes(key) || key === "space") send({ key });
  else return;
  event.preventDefault();
});

// -- the gallery -------------------------------------------------------------------------------------
async function loadStyles() {
  const body = await api("/api/styles");
  styleIds = body.styles.map((s) => s.id).join(",");
  const list = $("gallery");
  list.innerHTML = "";
  for (const style of body.styles) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "style";
    button.dataset.index = style.index;
    button.setAttribute("aria-label", `Style ${style.name}`);
    button.setAttribute("aria-pressed", String(current.style === style.index));
    const img = document.createElement("img");
    img.src = withToken(style.thumb);
    img.alt = "";
    const name = document.createElement("span");
    name.textContent = style.name;
    button.append(img, name);
    button.addEventListener("click", () => send({ style: style.index }));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Remove style ${style.name}`);
    remove.addEventListener("click", async () => {
      try {
        await api(`/api/styles/${style.id}`, { method: "DELETE" });
        say(`Removed ${style.name}.`, true);
        await loadStyles();
      } catch (error) {
        say(error.message);
      }
    });
    item.append(button, remove);
    list.appendChild(item);
  }
}

async function upload(file) {
  say(`Adding ${file.name}…`, true);
  try {
    const body = await api("/api/styles", {
      method: "POST", body: file,
      headers: { "X-Style-Name": encodeURIComponent(file.name), "Content-Type": "application/octet-stream" },
    });
    await loadStyles();
    say(body.added ? `Added ${file.name}.` : `${file.name} is already in the gallery.`, true);
    await send({ style: body.index });
  } catch (error) {
    say(`${file.name}: ${error.message}`);
  }
}

$("upload").addEventListener("change", () => {
  for (const file of $("upload").files) upload(file);
  $("upload").value = "";
});
const drop = $("drop");
for (const name of ["dragenter", "dragover"]) {
  document.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) drop.classList.remove("over"); });
document.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  for (const file of e.dataTransfer.files) upload(file);
});

window.addEventListener("pagehide", hangUp);

(async () => {
  try {
    const body = await api("/api/state?target=none");
    hasSource = body.has_source;
    await loadStyles();
    if (hasSource) connect("server");
    else { $("waiting").textContent = "This server has no source of its own: switch on your camera."; }
  } catch (error) {
    say(error.message);
  }
  poll();
})();
