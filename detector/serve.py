"""`detector serve`: detections over HTTP (FastAPI + uvicorn). HTTP in, Predictor out; no model
logic here: the weights load through detector.inference (a checkpoint .pt in PyTorch, an export
.onnx in ONNX Runtime or OpenVINO, test-time settings by the rule of every command), so all serve alike.

  GET  /          a page to drop an image on and see the boxes drawn
  GET  /health    {"status": "ok", "weights", "classes"}
  POST /predict   multipart field "file" = an image -> {"file", "width", "height", "detections":
                  [{"bbox_xyxy" (pixels), "score", "category_id", "name"}]}

Bad input gets a 4xx JSON {"error": "..."} naming the problem: an empty upload (400), a file no
decoder reads or a truncated one (415), more bytes or pixels than the limits (413), an image too
thin for the model's resize, e.g. 1 x 2000 px (422). The upload is checked and decoded by the
same code as `detector predict`.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations at run time.

import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from detector.dependencies import require
from detector.errors import DegenerateImageError, UploadError

MAX_UPLOAD_BYTES = 50 * 2**20
MAX_PIXELS = 40_000_000


def decode_upload(content: bytes, filename: str, max_pixels: int):
    """RGB uint8 [H, W, 3] of an uploaded file, or UploadError naming what is wrong with it."""
    from PIL import Image

    from detector.data.dataset import image_file_problem, read_image

    if not content:
        raise UploadError(400, f"{filename}: empty upload (send the image as the multipart field 'file')")
    if len(content) > MAX_UPLOAD_BYTES:
        raise UploadError(413, f"{filename}: {len(content)} bytes, more than the limit of {MAX_UPLOAD_BYTES}")
    suffix = Path(filename).suffix if len(Path(filename).suffix) <= 8 else ""
    with tempfile.TemporaryDirectory(prefix="detector-serve-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(content)
        problem = image_file_problem(path)
        if problem:
            raise UploadError(415, f"{filename}: {problem}")
        try:  # the header's size, before decoding a decompression bomb
            with Image.open(path) as header:
                width, height = header.size
        except Exception:  # noqa: BLE001 - a format PIL does not know: OpenCV decodes it below
            width = height = 0
        if width * height > max_pixels:
            raise UploadError(413, f"{filename}: {width}x{height} pixels, more than the limit of {max_pixels}")
        try:
            image = read_image(path)
        except Exception as error:  # noqa: BLE001 - any decoder failure is the upload's problem
            raise UploadError(415, f"{filename}: {str(error).replace(str(path), 'the upload')}") from None
    if image.shape[0] * image.shape[1] > max_pixels:
        raise UploadError(413, f"{filename}: {image.shape[1]}x{image.shape[0]} pixels, more than the limit of {max_pixels}")
    return image


def create_app(predictor, weights_name: str = "", max_pixels: int = MAX_PIXELS):
    """The FastAPI application around `predictor` (anything with `predict`, `check_size`, `category_names`)."""
    fastapi = require("fastapi", "serve", "detector serve")
    require("python_multipart", "serve", "detector serve")
    from fastapi import File, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse

    from detector.inference.categories import to_json

    app = fastapi.FastAPI(title="detector", description="Faster R-CNN detections over HTTP")
    lock = threading.Lock()  # one prediction at a time: the model uses every core already

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "weights": weights_name, "classes": list(predictor.category_names)}

    @app.post("/predict")
    async def predict(file: UploadFile | None = File(None)):
        if file is None:
            return JSONResponse({"error": "no file: send the image as the multipart field 'file'"}, status_code=400)
        name = file.filename or "upload"
        content = await file.read(MAX_UPLOAD_BYTES + 1)
        try:
            image = decode_upload(content, name, max_pixels)
            predictor.check_size(image.shape[0], image.shape[1], name)
        except UploadError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        except DegenerateImageError as error:
            return JSONResponse({"error": str(error)}, status_code=422)
        with lock:
            detection = predictor.predict([image])[0]
        return {"file": name, "width": int(image.shape[1]), "height": int(image.shape[0]),
                "detections": to_json(detection, predictor)}  # as predictions.json

    return app


def run_server(weights: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
               max_pixels: int = MAX_PIXELS, overrides: Sequence[str] = (), backend: str | None = None,
               precision: str | None = None) -> None:
    """Load `weights` once (test-time `overrides`, the `backend` and `precision` of an exported
    file, as every command: detector/inference/loading.py) and serve until interrupted."""
    uvicorn = require("uvicorn", "serve", "detector serve")
    from detector.inference import load_predictor

    predictor = load_predictor(weights, device, overrides=overrides, backend=backend, precision=precision)
    app = create_app(predictor, Path(weights).name, max_pixels)
    print(f"serving {weights} on http://{host}:{port} (POST /predict, GET /health)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=os.environ.get("DETECTOR_LOG_LEVEL", "warning"))


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>detector</title>
<style>body{font-family:sans-serif;margin:2em}#drop{border:2px dashed #888;padding:2em;text-align:center}
canvas{max-width:100%;margin-top:1em}</style></head>
<body><h1>detector</h1>
<div id="drop">Drop an image here, or <input type="file" id="file" accept="image/*"></div>
<p id="status"></p><canvas id="canvas"></canvas>
<script>
const drop = document.getElementById("drop"), status = document.getElementById("status");
const canvas = document.getElementById("canvas"), ctx = canvas.getContext("2d");
async function detect(file) {
  status.textContent = "detecting...";
  const body = new FormData(); body.append("file", file);
  const reply = await fetch("/predict", {method: "POST", body});
  const result = await reply.json();
  if (!reply.ok) { status.textContent = "error: " + result.error; return; }
  const image = new Image();
  image.onload = () => {
    canvas.width = image.width; canvas.height = image.height; ctx.drawImage(image, 0, 0);
    ctx.lineWidth = 2; ctx.font = "14px sans-serif";
    for (const d of result.detections) {
      const [x1, y1, x2, y2] = d.bbox_xyxy;
      ctx.strokeStyle = ctx.fillStyle = "#00c800";
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      ctx.fillText(d.name + " " + d.score.toFixed(2), x1 + 2, Math.max(y1 - 4, 12));
    }
    status.textContent = result.detections.length + " detections";
  };
  image.src = URL.createObjectURL(file);
}
drop.ondragover = e => e.preventDefault();
drop.ondrop = e => { e.preventDefault(); if (e.dataTransfer.files.length) detect(e.dataTransfer.files[0]); };
document.getElementById("file").onchange = e => detect(e.target.files[0]);
</script></body></html>
"""
