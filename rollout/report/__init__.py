"""Reports: a stage's go/no-go report assembled and rendered as HTML, Markdown and JSON.

Its modules, each about one thing:

- ``build``: Build a stage's go/no-go report from the store and write it as HTML, Markdown and
  JSON.
- ``model_index``: The model of the workspace index page (``reports/index.html``).
- ``render``: Render a go/no-go rollout report to a self-contained HTML page or to Markdown.
"""

__all__ = [
    "build",
    "model_index",
    "render",
]
