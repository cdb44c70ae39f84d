"""The HTTP server of `detector serve` (entry point: detector/serve.py), one file per concern:
settings.py every limit and switch; upload.py the streaming form and the header check
(detector/data/image_header.py); access.py the token and the open-bind warning; batching.py
micro-batched inference off the event loop; metrics.py Prometheus; app.py the routes, the
admission queue, timeouts and the one error shape; page.py the page at GET /.
No model logic: the predictor comes from detector.inference like every command's."""
