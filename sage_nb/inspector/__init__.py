"""The inspector: a live widget and static renderings that read job snapshots only.

``Inspector(job_or_pipeline)`` is the widget; :mod:`.view` and :mod:`.tables` hold the pure
snapshot -> view-model functions it is built on, :mod:`.render` and :mod:`.report` the
matplotlib and HTML renderings used outside a live notebook.
"""

from .widget import Inspector

__all__ = ["Inspector"]
