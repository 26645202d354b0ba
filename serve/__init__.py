"""serve: an OpenAI-compatible reasoning endpoint over llama.cpp, vLLM and transformers backends."""
