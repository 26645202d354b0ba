"""The API routes, one module each, vLLM-style: module-level routers that take the engine from app.state."""
