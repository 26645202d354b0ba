"""The OpenAI-compatible reasoning server (FastAPI) and the Gradio tutor that is its client."""
