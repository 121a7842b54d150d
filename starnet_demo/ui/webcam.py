"""The Webcam tab's browser-side pieces: the annotated picture, sent inline, and the rates line.

``inline_jpeg`` sends each annotated frame inside the stream's message as a JPEG data URL. Gradio's own image output
saves every frame to its cache (a file per frame, kept for the sweep's age: about 2,000 files under a 10-minute soak)
and the page then fetches it with a second request; inline, a frame touches no disk and costs no round trip.

The rates line is measured in the visitor's browser: the camera's frame rate, the rate of annotated frames shown,
and how far the picture lags behind the camera. Only the page knows the first and the last (the server sees only the
frames it is sent), so a small script does it, light enough not to cost frames: it reads how many frames the camera
has delivered to the video (``getVideoPlaybackQuality``; counting the frames the video paints, with
``requestVideoFrameCallback``, read 10.9 FPS for a 30 FPS camera on a browser with a busy core) and counts the
annotated images as they load. A result's lag is the time
from the page encoding its camera frame (Gradio's webcam calls ``canvas.toDataURL``, which the script wraps to note
when each length was made) to the result loading; the result names that length (``inline_jpeg``). Lag in frames is
that times the camera's rate. It writes the line twice a second.
"""

from __future__ import annotations

import base64

import cv2
import gradio as gr
import numpy as np
from gradio.data_classes import Base64ImageData

CAMERA_ID, OUTPUT_ID = "webcam-in", "webcam-out"  # the elem_ids of the camera and the annotated image
RATES_ID = "webcam-rates"  # and of the rates line under it
#: The results' JPEG quality: on a 640×480 street frame, 89 KB against 137 KB at the browser's own 0.92 (what
#: Gradio's webcam sends), each a frame's trip through the stream's message and the page's decode.
JPEG_QUALITY = 80


def inline_jpeg(image: np.ndarray, answers: int | None = None) -> dict[str, str]:
    """An RGB frame as the Image output's value, sent as is (the event has ``postprocess=False``): a JPEG data URL,
    tagged ``;answers=<length>`` with the length of the camera frame's data URL it answers (a media-type parameter,
    which browsers ignore), so that the page pairs each result with the frame it shows."""
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"could not encode a {image.shape} frame as JPEG")
    tag = f";answers={answers}" if answers is not None else ""
    return Base64ImageData(url=f"data:image/jpeg{tag};base64," + base64.b64encode(jpeg).decode()).model_dump()


RATES_JS = """
const line = element.querySelector('.webcam-rates') || element;
const delivered = [], shown = [], lags = [], encoded = new Map();
const WINDOW = 2000;
const toDataURL = HTMLCanvasElement.prototype.toDataURL;
HTMLCanvasElement.prototype.toDataURL = function (...args) {  // the webcam's encode of each frame it sends
  const t = performance.now(), url = toDataURL.apply(this, args);
  encoded.delete(url.length);
  encoded.set(url.length, t);
  if (encoded.size > 100) encoded.delete(encoded.keys().next().value);
  return url;
};
document.addEventListener('load', (e) => {
  const img = e.target;
  if (img.tagName !== 'IMG' || !img.closest('#OUTPUT_ID')) return;
  const t = performance.now(), m = /^data:[^,]*;answers=(\\d+)/.exec(img.src.slice(0, 64));
  shown.push(t);
  const sent = m && encoded.get(Number(m[1]));
  if (sent !== undefined && sent !== null) lags.push({t, ms: t - sent});
}, true);
setInterval(() => {
  const now = performance.now(), video = document.querySelector('#CAMERA_ID video');
  const total = video ? video.getVideoPlaybackQuality().totalVideoFrames : 0;
  if (delivered.length && total < delivered[delivered.length - 1][1]) delivered.length = 0;  // a new stream
  delivered.push([now, total]);
  while (delivered.length && delivered[0][0] < now - WINDOW) delivered.shift();
  while (shown.length && shown[0] < now - WINDOW) shown.shift();
  while (lags.length && lags[0].t < now - WINDOW) lags.shift();
  if (!shown.length) { line.textContent = ''; return; }
  const [t0, n0] = delivered[0], [t1, n1] = delivered[delivered.length - 1];
  const camFps = t1 > t0 ? (n1 - n0) / (t1 - t0) * 1000 : 0;
  const shownFps = shown.length > 1 ? (shown.length - 1) / (shown[shown.length - 1] - shown[0]) * 1000 : 0;
  const ms = lags.map((l) => l.ms).sort((a, b) => a - b)[Math.floor(lags.length / 2)];
  line.textContent = `Camera ${camFps.toFixed(1)} FPS · shown ${shownFps.toFixed(1)} FPS` +
    (ms === undefined ? '' : ` · ${(ms * camFps / 1000).toFixed(1)} frames (${ms.toFixed(0)} ms) behind`);
}, 500);
""".replace("OUTPUT_ID", OUTPUT_ID).replace("CAMERA_ID", CAMERA_ID)


def rates_line() -> gr.HTML:
    """The line under the annotated image, filled in by ``RATES_JS``."""
    return gr.HTML("", html_template="<div class='webcam-rates'></div>", js_on_load=RATES_JS,
                   elem_id=RATES_ID)
