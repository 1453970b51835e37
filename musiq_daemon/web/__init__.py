"""``musiqd serve``: a read-only web gallery of the index (optional ``web`` extra: Starlette, Jinja2,
uvicorn). Server-rendered pages with a little JavaScript for the keyboard, no build step."""
