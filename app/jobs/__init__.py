"""Background work: pre-generation now; gc, reconcile, verify and tier run here too."""
