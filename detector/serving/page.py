"""The page at GET /: drop an image, see its boxes drawn (plain HTML and JavaScript, no build)."""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>detector</title>
<style>body{font-family:sans-serif;margin:2em}#drop{border:2px dashed #888;padding:2em;text-align:center}
canvas{max-width:100%;margin-top:1em}</style></head>
<body><h1>detector</h1>
<div id="drop">Drop an image here, or <input type="file" id="file" accept="image/*"></div>
<p><label>Token (if the server has one): <input type="password" id="token" autocomplete="off"></label></p>
<p id="status"></p><canvas id="canvas"></canvas>
<script>
const drop = document.getElementById("drop"), status = document.getElementById("status");
const canvas = document.getElementById("canvas"), ctx = canvas.getContext("2d");
async function detect(file) {
  status.textContent = "detecting...";
  const body = new FormData(); body.append("file", file);
  const token = document.getElementById("token").value;
  const headers = token ? {"Authorization": "Bearer " + token} : {};
  const reply = await fetch("/predict", {method: "POST", body, headers});
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
