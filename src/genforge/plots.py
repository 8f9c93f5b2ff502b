"""matplotlib, headless: every figure genforge draws starts here."""

from __future__ import annotations


def figure():
    """pyplot with the Agg backend (no display needed); chosen when the first figure is drawn, not when genforge is
    imported, so that a user's own backend choice stands until then."""
    import matplotlib  # deferred: about 0.3 s of start-up that only the commands drawing a figure pay

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
