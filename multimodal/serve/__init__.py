"""``python -m multimodal.serve``: the suite's models behind OpenAI's HTTP API (completions with streaming and
log-probs, image generation, embeddings, zero-shot classification) with continuous batching and a playground page.

An application on top of the heads: it imports GPT, DALL·E and CLIP; nothing in the suite imports it.
``multimodal.serve.app.create_app`` builds the FastAPI app, ``multimodal.serve.engine.Engine`` batches completions.
"""
