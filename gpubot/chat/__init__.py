"""The chat side: the dispatcher (``dispatch``), one module per verb family (``launching``,
``jobs``, ``approvals``, ``market``, ``spending``, ``audit_view``), planning and submitting
launches (``launch``) and permissions."""
