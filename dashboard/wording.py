"""How the app names things to a person: one name per method in every tab, counts with plurals.

Compare lists a method by its scorer's display name (``MaxEntropy``, ``MSP``) and a head by its
version; the Leaderboard, the Flag list and the PR-curve legend read stored method strings
(``entropy``, ``msp:T=2.0``, ``head:3``). Both go through ``method_label`` so a method reads the
same everywhere; the stored string stays the identity the code keys on.
"""

from __future__ import annotations

from anomseg.errors import AnomsegError


def method_label(method: str) -> str:
    """Display name of a stored method string: ``entropy`` -> ``MaxEntropy``,
    ``msp:T=2.0`` -> ``MSP (T=2)``, ``head:3`` -> ``Head v3``; an unknown string as it is."""
    from anomseg import scoring
    from anomseg.head_methods import head_suffix

    text = (method or "").strip()
    suffix = head_suffix(text)
    if suffix is not None:
        return f"Head v{suffix}"
    try:
        name, params = scoring.parse_method(text)
        base = scoring.get_scorer(name).label or name
    except AnomsegError:
        return text  # e.g. an external score map's name or a scorer since removed
    if params:
        base += " (" + ", ".join(f"{k}={float(v):g}" for k, v in sorted(params.items())) + ")"
    return base


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 model``, ``0 models``, ``2 models`` (``plural`` for irregular nouns)."""
    n = int(n)
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


# what to run when a workspace has nothing a head could train on (Curate and Retrain say it)
REGISTER_TRAINING_HINT = (
    "Register training data first, then reload the page: pasted anomalies with "
    "`anomseg add-synthetic NAME --backgrounds SOURCE:ROOT --n 50 --accept`, or images to flag "
    "with `anomseg add-dataset ROOT --role train`."
)


def job_label(st) -> str:
    """One line for a job's progress bar: its message, and its error only when that says more
    (a job refused at the start stores the same text as both)."""
    label = f"job #{st.id} {st.status}: {st.message}"
    if st.error and st.error.strip() not in (st.message or ""):
        label += f" ({st.error})"
    return label


def worst_caption(image: str, method: str, metric: str, value: float | None) -> str:
    """Caption of a worst-image thumbnail: how bad (percent), under which method, which image;
    the score first, so a gallery that cuts a long caption cuts the file name, not the score."""
    score = "n/a" if value is None else f"{100 * float(value):.1f}"
    return f"{metric} {score} · {method} · {image}"
