"""`atspeed serve`: top-K recommendations over HTTP, with concurrent requests batched on the fly.

    from atspeed.serve import ServeConfig, create_app, serve
    serve(ServeConfig(data="DIR", target="runs/target", port=8000))   # or: python -m atspeed.serve

`create_app(rec, config)` is the FastAPI app for an already loaded recommender (tests, embedding);
`serve(config)` loads one and runs uvicorn. The web stack is imported on first use.
"""

from atspeed.lazy import export_lazily

_EXPORTS = {
    "ServeConfig": "atspeed.serve.config",
    "create_app": "atspeed.serve.app",
    "serve": "atspeed.serve.main",
    "main": "atspeed.serve.main",
}
export_lazily(__name__, _EXPORTS)
