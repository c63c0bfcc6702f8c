"""The service's routes, one APIRouter per family (completions, chat, images, CLIP, pages and models)."""
