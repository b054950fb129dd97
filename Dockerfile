FROM python:3.11-slim
WORKDIR /app
COPY . .
# torch is pinned in pyproject.toml; point pip at a CPU-only wheel index for a much smaller image
RUN pip install --no-cache-dir -e .
ENTRYPOINT []
