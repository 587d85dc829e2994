"""Shared UI pieces: theme, CSS, the cross-tab context and the error wrapper for event handlers."""

from __future__ import annotations

import functools
import html
import logging
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from anomseg.errors import AnomsegError
from dashboard.panels import PANELS_CSS
from db.models import row_id

log = logging.getLogger("anomseg.dashboard")

# System fonts only: the app must work with no internet (no web-font downloads).
THEME = gr.themes.Soft(
    primary_hue="indigo",
    secondary_hue="amber",
    neutral_hue="slate",
    radius_size="md",
    font=["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)

CSS = """
#anomseg-header { padding: 10px 16px; border-radius: 10px;
  background: linear-gradient(90deg, #312e81 0%, #4338ca 55%, #6366f1 100%); color: #fff; }
#anomseg-header h1 { margin: 0; font-size: 1.45rem; font-weight: 700; color: #fff; }
#anomseg-header p { margin: 2px 0 0 0; opacity: .9; font-size: .88rem; color: #e0e7ff; }
#anomseg-status, #anomseg-status p { font-size: .85rem; }
.anomseg-note p { font-size: .85rem; color: var(--body-text-color-subdued); }
.anomseg-progress { height: 18px; border-radius: 9px; background: var(--neutral-200);
  overflow: hidden; }
.anomseg-progress > div { height: 100%; background: linear-gradient(90deg, #6366f1, #22c55e);
  transition: width .4s ease; }
.anomseg-progress-label { font-size: .85rem; margin-top: 4px; }
footer { display: none !important; }
"""
CSS += PANELS_CSS

HEADER_HTML = """
<div id="anomseg-header">
  <h1>anomseg · anomaly segmentation workbench</h1>
  <p>Compare anomaly scores side by side, flag mistakes, curate synthetic pastes,
  retrain the anomaly head and read the leaderboard.</p>
</div>
"""


@dataclass
class Context:
    """Components and callbacks that tabs share (filled in as the tabs are built)."""

    svc: Any
    tabs: Any = None
    parts: dict[str, Any] = field(default_factory=dict)
    header: Any = None  # the header status line (counts of models, images, flags, heads)
    header_fn: Callable[[], str] | None = None

    def then_refresh_header(self, event: Any) -> Any:
        """Chain a header refresh after ``event``, so its counts never lag behind a change."""
        if self.header is None or self.header_fn is None:
            return event
        return event.then(self.header_fn, None, self.header, api_name=False)

    def __getitem__(self, key: str) -> Any:
        return self.parts[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.parts[key] = value


def user_of(request: gr.Request | None) -> str:
    """The logged-in user name (with --auth), else "anonymous"."""
    name = getattr(request, "username", None) if request is not None else None
    return str(name) if name else "anonymous"


def form_id(value: Any, what: str) -> int | None:
    """A row id from a form or an API call: None when nothing is chosen (empty or 0), else a
    whole number in range (``db.models.row_id``) - never a silent int(1.5) or an OverflowError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, bool) and isinstance(value, int | float) and value == 0:
        return None
    return row_id(value, what)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into a visible gr.Error toast, and unexpected ones into a short one.

    Raising gr.Error aborts the event, so no output is half-updated and nothing is stored.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except AnomsegError as exc:
            raise gr.Error(str(exc), title="Not done", print_exception=False) from None
        except Exception as exc:  # a bug: tell the user something specific, keep the trace
            log.error("dashboard handler %s failed:\n%s", fn.__name__, traceback.format_exc())
            raise gr.Error(f"{type(exc).__name__}: {exc}", title="Internal error") from None

    return wrapper


def refusing(n_outputs: int, status: int, tidy: Callable[..., str] | None = None):
    """For edits whose outputs show the last good state (a preview, a table): a refusal keeps
    every output as it is and puts the reason in output ``status`` (plus a warning toast).

    ``gr.Error`` would mark every output of the event "Error" and leave the status line showing
    the previous success, which reads as a crash. ``tidy(message, *args)`` may rewrite the
    message (e.g. to name the user's file instead of a server temp path).
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except AnomsegError as exc:
                msg = tidy(str(exc), *args) if tidy is not None else str(exc)
                title = "Not done"
            except Exception as exc:  # a bug: say something specific, keep the trace in the log
                log.error("dashboard handler %s failed:\n%s", fn.__name__, traceback.format_exc())
                msg, title = f"{type(exc).__name__}: {exc}", "Internal error"
            gr.Warning(msg, title=title)
            out: list[Any] = [gr.update()] * n_outputs
            out[status] = f"**{title}:** {msg}"
            return tuple(out) if n_outputs > 1 else out[0]

        return wrapper

    return deco


def refusal_html(message: str) -> str:
    """A refused request's reason for an HTML status line (`command` spans become code)."""
    safe = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(message or "", quote=False))
    return f'<div class="anomseg-refusal"><b>Not done:</b> {safe}</div>'


def progress_html(fraction: float, label: str) -> str:
    """A small progress bar (HTML)."""
    pct = max(0.0, min(1.0, float(fraction))) * 100
    safe = (label or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        f'<div class="anomseg-progress"><div style="width:{pct:.1f}%"></div></div>'
        f'<div class="anomseg-progress-label">{pct:.0f}% · {safe}</div>'
    )
