"""The Webcam tab's rates line, measured in the visitor's browser: the camera's frame rate, the rate of annotated
frames shown, and how far the picture lags behind the camera.

Only the page knows the first and the last (the server sees only the frames it is sent), so a small script does it,
light enough not to cost frames: it counts the camera's frames as the video presents them
(``requestVideoFrameCallback``), the annotated images as they load, and takes a frame's lag as the time from its upload
(the ``/stream`` POST, from the browser's resource timings) to its result being loaded; lag in frames is that times the
camera's rate. It writes the line twice a second.
"""

from __future__ import annotations

import gradio as gr

CAMERA_ID, OUTPUT_ID = "webcam-in", "webcam-out"  # the elem_ids of the camera and the annotated image

RATES_JS = """
const line = element.querySelector('.webcam-rates') || element;
const cam = [], shown = [], lags = [], sent = [], gets = new Map(), pending = [];
let video = null;
const WINDOW = 2000;
const recent = (a, now) => { while (a.length && a[0] < now - WINDOW) a.shift(); return a; };
const rate = (a) => a.length > 1 ? (a.length - 1) / (a[a.length - 1] - a[0]) * 1000 : 0;
const onFrame = (now) => { cam.push(now); if (video) video.requestVideoFrameCallback(onFrame); };
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    if (/\\/stream\\/[^/?]+$/.test(e.name)) sent.push(e.startTime);
    else if (e.name.includes('file=')) gets.set(e.name, e.startTime);
  }
  while (gets.size > 100) gets.delete(gets.keys().next().value);  // results never shown (a skipped frame)
}).observe({type: 'resource'});
document.addEventListener('load', (e) => {
  const img = e.target;
  if (img.tagName === 'IMG' && img.closest('#OUTPUT_ID')) {
    const t = performance.now();
    shown.push(t);
    pending.push({t, src: img.currentSrc || img.src});
  }
}, true);
setInterval(() => {
  const now = performance.now();
  const v = document.querySelector('#CAMERA_ID video');
  if (v !== video) { video = v; if (v) v.requestVideoFrameCallback(onFrame); }
  while (pending.length && gets.has(pending[0].src)) {  // a result's upload: the last one before its download
    const p = pending.shift(), start = gets.get(p.src);
    gets.delete(p.src);
    const up = sent.filter((s) => s <= start).pop();
    if (up !== undefined) lags.push({t: p.t, ms: p.t - up});
  }
  while (pending.length && pending[0].t < now - WINDOW) pending.shift();
  while (sent.length > 1 && sent[1] < now - WINDOW) sent.shift();
  while (lags.length && lags[0].t < now - WINDOW) lags.shift();
  const camFps = rate(recent(cam, now)), shownFps = rate(recent(shown, now));
  if (!shown.length) { line.textContent = ''; return; }
  const ms = lags.map((l) => l.ms).sort((a, b) => a - b)[Math.floor(lags.length / 2)];
  line.textContent = `Camera ${camFps.toFixed(1)} FPS · shown ${shownFps.toFixed(1)} FPS` +
    (ms === undefined ? '' : ` · ${(ms * camFps / 1000).toFixed(1)} frames (${ms.toFixed(0)} ms) behind`);
}, 500);
""".replace("OUTPUT_ID", OUTPUT_ID).replace("CAMERA_ID", CAMERA_ID)


def rates_line() -> gr.HTML:
    """The line under the annotated image, filled in by ``RATES_JS``."""
    return gr.HTML("", html_template="<div class='webcam-rates'></div>", js_on_load=RATES_JS,
                   elem_id="webcam-rates")
