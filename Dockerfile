# Placeholder: the real multi-stage edge (llama.cpp) and GPU (vLLM) images come with the
# pipeline/demo work. This image runs the CLI on CPU.
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN bash scripts/setup-venv.sh
ENTRYPOINT ["/app/.venv/bin/edgereason"]
CMD ["doctor"]
